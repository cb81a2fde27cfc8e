"""Learning-rate and dropout schedules: pure functions of training progress.

Progress is measured in epochs as a float (``epoch + (step + 1) / steps_per_epoch``) so the learning
rate changes every step and warmup is smooth. Nothing here keeps state.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LR_SCHEDULES = ("none", "cosine", "linear", "step")
DROPOUT_SCHEDULES = ("none", "linear_decay", "cosine_decay", "adaptive")


@dataclass(frozen=True)
class LRSchedule:
    """lr(t) for t in epochs: linear warmup from 0 over ``warmup_epochs``, then the chosen decay to ``min_lr``."""
    kind: str = "cosine"
    base_lr: float = 0.1
    total_epochs: int = 200
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    decay_factor: float = 0.1
    decay_steps: float | None = None   # step schedule: epochs between decays (auto: a third of the run)

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.base_lr <= 0 or self.total_epochs <= 0:
            raise ValueError("lr schedule needs base_lr > 0 and total_epochs > 0")
        if self.warmup_epochs < 0 or self.min_lr < 0 or self.min_lr > self.base_lr:
            raise ValueError("lr schedule needs warmup_epochs >= 0 and 0 <= min_lr <= base_lr")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"lr decay factor must be in (0, 1], got {self.decay_factor}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ValueError(f"lr decay steps must be positive, got {self.decay_steps}")

    @property
    def step_size(self) -> float:
        """Epochs between decays of the step schedule."""
        if self.decay_steps is not None:
            return float(self.decay_steps)
        return max(1.0, math.floor((self.total_epochs - self.warmup_epochs) / 3))

    def __call__(self, t: float) -> float:
        return lr_at(self, t)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(s: LRSchedule, t: float) -> float:
    """The learning rate after t epochs of training (t may be fractional)."""
    w = s.warmup_epochs
    if w > 0 and t < w:
        return s.base_lr * max(t, 0.0) / w
    span = max(s.total_epochs - w, 1e-12)
    u = min(max((t - w) / span, 0.0), 1.0)          # fraction of the post-warmup run done
    if s.kind == "none":
        return s.base_lr
    if s.kind == "cosine":
        return s.min_lr + (s.base_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))
    if s.kind == "linear":
        return s.base_lr - (s.base_lr - s.min_lr) * u
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
