"""Learning-rate and dropout schedules: pure functions of training progress.

Progress is measured in epochs as a float (``epoch + (step + 1) / steps_per_epoch``) so the learning
rate changes every step and warmup is smooth. Nothing here keeps state (the one schedule that must,
ReduceLROnPlateau, is in ``plateau.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import SettingError

LR_SCHEDULES = ("none", "cosine", "linear", "step", "onecycle", "plateau", "piecewise")
PIECEWISE_POINTS = (0.0, 0.2, 0.23, 1.0, 1.0, 0.07)
"""The piecewise schedule's default shape, (fraction of the run, factor) pairs flattened: from 0.2 of the peak up
to it over the first 23% of the steps, then down to 0.07 of it (the fast CIFAR-10 recipes' triangle)."""
DROPOUT_SCHEDULES = ("none", "linear_decay", "cosine_decay", "adaptive")


@dataclass(frozen=True)
class LRSchedule:
    """lr(t) for t in epochs: linear warmup from 0 over ``warmup_epochs``, then the chosen decay to ``min_lr``.

    ``step`` decays by ``decay_factor`` every ``decay_steps`` epochs after warmup (one number), or at each of
    several milestone epochs counted from the start of the run (a sequence, as torch's MultiStepLR).
    ``onecycle`` is torch's OneCycleLR (cosine annealing, two phases) on the grid of ``steps_per_epoch``
    optimizer steps: from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of the run,
    then down to ``max_lr / div_factor / final_div_factor``; it has its own warm-up, so ``warmup_epochs``
    must be 0. ``plateau`` here is only its warmup and constant part; ReduceLROnPlateau scales it.
    ``piecewise`` multiplies ``base_lr`` by a piecewise-linear function of the fraction of the run done
    (PyTorch's LambdaLR with such a function), given as ``points``: (fraction, factor) pairs flattened, the
    fractions increasing from 0 to 1, the factors >= 0; it too has its own warm-up.
    ``min_lr`` floors every kind after warmup.
    """
    kind: str = "cosine"
    base_lr: float = 0.1
    total_epochs: float = 200
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    decay_factor: float = 0.1
    decay_steps: float | tuple[float, ...] | None = None   # step: interval or milestones (auto: a third of the run)
    max_lr: float | None = None        # onecycle: the peak (default: base_lr)
    pct_start: float = 0.3             # onecycle: fraction of the run spent increasing
    div_factor: float = 25.0           # onecycle: initial lr = max_lr / div_factor
    final_div_factor: float = 1e4      # onecycle: final lr = initial lr / final_div_factor
    steps_per_epoch: int = 1           # onecycle: optimizer steps per epoch (its step grid)
    points: tuple[float, ...] | None = None   # piecewise: fraction, factor, fraction, factor, ... (None: the default)

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.base_lr <= 0 or self.total_epochs <= 0:
            raise ValueError("lr schedule needs base_lr > 0 and total_epochs > 0")
        if self.warmup_epochs < 0 or self.min_lr < 0 or self.min_lr > self.base_lr:
            raise ValueError("lr schedule needs warmup_epochs >= 0 and 0 <= min_lr <= base_lr")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"lr decay factor must be in (0, 1], got {self.decay_factor}")
        steps = self.decay_steps
        if isinstance(steps, (list, tuple)):
            steps = tuple(float(v) for v in steps)
            object.__setattr__(self, "decay_steps", steps[0] if len(steps) == 1 else steps)
            if not steps or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(f"lr decay milestones must be increasing epochs, "
                                 f"got {' '.join(f'{v:g}' for v in steps)}")
        if any(v <= 0 for v in _as_tuple(self.decay_steps)):
            raise ValueError(f"lr decay steps must be positive, got {self.decay_steps}")
        if self.kind == "onecycle":
            if self.max_lr is not None and self.max_lr < self.base_lr:
                raise SettingError(f"max_lr {self.max_lr:g} is below base_lr {self.base_lr:g}", "max_lr", base_lr="lr")
            if not 0 < self.pct_start < 1:
                raise SettingError(f"pct_start must be in (0, 1), got {self.pct_start:g}", "pct_start")
            if self.warmup_epochs:
                raise SettingError("onecycle warms up by itself over pct_start of the run; give no warmup_epochs",
                                   "pct_start", "warmup_epochs")
            if self.div_factor <= 0 or self.final_div_factor <= 0 or self.steps_per_epoch < 1:
                raise ValueError("onecycle needs div_factor, final_div_factor > 0 and steps_per_epoch >= 1")
        if self.kind == "piecewise":
            if self.warmup_epochs:
                raise SettingError("piecewise has its own warm-up in its points; give no warmup_epochs",
                                   "warmup_epochs")
            object.__setattr__(self, "points", _checked_points(self.points))

    @property
    def milestones(self) -> tuple[float, ...] | None:
        """The step schedule's milestone epochs, or None when it decays at a fixed interval."""
        return self.decay_steps if isinstance(self.decay_steps, tuple) else None

    @property
    def step_size(self) -> float:
        """Epochs between decays of the step schedule (interval form)."""
        if self.decay_steps is not None and self.milestones is None:
            return float(self.decay_steps)
        return max(1.0, math.floor((self.total_epochs - self.warmup_epochs) / 3))

    @property
    def peak_lr(self) -> float:
        return self.base_lr if self.max_lr is None else self.max_lr

    def __call__(self, t: float) -> float:
        return lr_at(self, t)

    def epoch_end(self, metric: float) -> None:
        """An epoch ended with ``metric`` (its test loss): nothing changes, the lr being a function of progress
        only. ReduceLROnPlateau, which follows the metric, has the same interface, so the Trainer calls both
        alike."""

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: this schedule keeps no state (a checkpoint's plateau state is ignored)."""

    def to_dict(self) -> dict:
        return asdict(self)


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """The optimizer steps of a run of ``epochs`` epochs: a fraction of an epoch rounded up to whole steps (the
    rounding to 9 places first keeps 1.1 epochs of 50 steps at 55, not 56 through 55.00000000000001)."""
    return math.ceil(round(epochs * steps_per_epoch, 9))


def _checked_points(points) -> tuple[float, ...]:
    """The piecewise schedule's points as a flat tuple of floats (the default shape for None), or a SettingError
    saying what is wrong with them."""
    if points is None:
        return PIECEWISE_POINTS
    flat = tuple(float(v) for v in points)
    said = " ".join(f"{v:g}" for v in flat)
    if len(flat) < 4 or len(flat) % 2:
        raise SettingError(f"points must be pairs of fraction and factor, at least two, got {said}", points="lr_points")
    fractions, factors = flat[0::2], flat[1::2]
    if fractions[0] != 0 or fractions[-1] != 1 or any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise SettingError(f"points' fractions must rise from 0 to 1, got {' '.join(f'{v:g}' for v in fractions)}",
                           points="lr_points")
    if min(factors) < 0 or not all(math.isfinite(v) for v in flat):
        raise SettingError(f"points' factors must be finite and >= 0, got {' '.join(f'{v:g}' for v in factors)}",
                           points="lr_points")
    return flat


def piecewise_factor(points: tuple[float, ...], u: float) -> float:
    """The factor at fraction ``u`` of the run: linear between the points, constant past their ends."""
    fractions, factors = points[0::2], points[1::2]
    if u <= fractions[0]:
        return factors[0]
    for (u0, f0), (u1, f1) in zip(zip(fractions, factors), zip(fractions[1:], factors[1:])):
        if u <= u1:
            return f0 + (f1 - f0) * (u - u0) / (u1 - u0)
    return factors[-1]


def _as_tuple(v) -> tuple:
    return () if v is None else v if isinstance(v, tuple) else (v,)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's cosine annealing from ``start`` to ``end``, pct in [0, 1]."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle_at(s: LRSchedule, t: float) -> float:
    """OneCycleLR's lr for the optimizer step that ends at progress t (step k = t * steps_per_epoch - 1)."""
    total = round(s.total_epochs * s.steps_per_epoch)
    k = min(max(round(t * s.steps_per_epoch) - 1, 0), total - 1)
    initial = s.peak_lr / s.div_factor
    up_end = s.pct_start * total - 1
    if k <= up_end:
        return _cos_anneal(initial, s.peak_lr, k / up_end if up_end > 0 else 1.0)
    return _cos_anneal(s.peak_lr, initial / s.final_div_factor, (k - up_end) / (total - 1 - up_end))


def lr_at(s: LRSchedule, t: float) -> float:
    """The learning rate after t epochs of training (t may be fractional)."""
    if s.kind == "onecycle":
        return max(s.min_lr, onecycle_at(s, t))
    if s.kind == "piecewise":
        return max(s.min_lr, s.base_lr * piecewise_factor(s.points, t / s.total_epochs))
    w = s.warmup_epochs
    if w > 0 and t < w:
        return s.base_lr * max(t, 0.0) / w
    span = max(s.total_epochs - w, 1e-12)
    u = min(max((t - w) / span, 0.0), 1.0)          # fraction of the post-warmup run done
    if s.kind in ("none", "plateau"):
        return s.base_lr
    if s.kind == "cosine":
        return s.min_lr + (s.base_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))
    if s.kind == "linear":
        return s.base_lr - (s.base_lr - s.min_lr) * u
    if s.milestones is not None:
        decays = sum(t + 1e-9 >= m for m in s.milestones)
    else:
        decays = math.floor(max(t - w, 0.0) / s.step_size + 1e-9)
    return max(s.min_lr, s.base_lr * s.decay_factor ** decays)


@dataclass(frozen=True)
class DropoutSchedule:
    """Dropout rate by epoch: constant, linear or cosine decay from ``rate`` to ``min_rate``, or adaptive."""
    kind: str = "none"
    rate: float = 0.5
    min_rate: float = 0.0
    max_rate: float = 0.7
    total_epochs: int = 200
    adaptive_step: float = 0.05
    gap_high: float = 0.05     # raise dropout when train acc exceeds test acc by more than this
    gap_low: float = 0.02      # lower it when the gap is below this

    def __post_init__(self) -> None:
        if self.kind not in DROPOUT_SCHEDULES:
            raise ValueError(f"unknown dropout schedule {self.kind!r}; choose one of {', '.join(DROPOUT_SCHEDULES)}")
        for name in ("rate", "min_rate", "max_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"dropout {name.replace('_', ' ')} must be in [0, 1), got {getattr(self, name)}")
        if self.min_rate > self.max_rate:
            raise ValueError(f"min dropout {self.min_rate} is above max dropout {self.max_rate}")

    def at_epoch(self, epoch: int) -> float:
        """Rate for 0-based ``epoch`` (non-adaptive kinds; adaptive starts at ``rate``)."""
        if self.kind in ("none", "adaptive"):
            return self.rate
        u = min(max(epoch / max(self.total_epochs - 1, 1), 0.0), 1.0)
        if self.kind == "linear_decay":
            return self.rate + (self.min_rate - self.rate) * u
        return self.min_rate + (self.rate - self.min_rate) * 0.5 * (1.0 + math.cos(math.pi * u))

    def adapt(self, current: float, train_acc: float, test_acc: float) -> float:
        """Adaptive rule: next rate from the current one and the train/test accuracy gap, within [min, max]."""
        gap = train_acc - test_acc
        if gap > self.gap_high:
            current += self.adaptive_step
        elif gap < self.gap_low:
            current -= self.adaptive_step
        return float(min(max(current, self.min_rate), self.max_rate))

    def next_rate(self, epoch: int, current: float, train_acc: float | None = None,
                  test_acc: float | None = None) -> float:
        """The rate to use for ``epoch`` given what happened in the previous one."""
        if self.kind == "adaptive":
            if epoch == 0 or train_acc is None or test_acc is None:
                return self.rate
            return self.adapt(current, train_acc, test_acc)
        return self.at_epoch(epoch)

    def to_dict(self) -> dict:
        return asdict(self)
