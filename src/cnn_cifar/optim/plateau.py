"""ReduceLROnPlateau: the one learning-rate schedule with state, because it follows a metric.

As torch.optim.lr_scheduler.ReduceLROnPlateau (mode "min", relative threshold 1e-4, no cooldown): when
the metric (the test loss, once per epoch) has not improved on its best for more than ``patience``
epochs, the learning rate is multiplied by ``factor``, floored at ``min_lr``. Its state (best value, bad
epochs, current lr) is saved in the checkpoint with the schedule and restored on resume.
"""
from __future__ import annotations

import math

from ..errors import SettingError
from .schedules import LRSchedule


class ReduceLROnPlateau:
    """Called like an LRSchedule, ``sched(t)``: the warmup of ``base`` (an LRSchedule of kind "plateau")
    scaled to the current lr; ``step(metric)`` at each epoch's end may lower that lr. ``epoch_end`` and
    ``load_state_dict`` are the interface it shares with LRSchedule (whose do nothing)."""

    def __init__(self, base: LRSchedule, factor: float = 0.1, patience: int = 2, threshold: float = 1e-4,
                 eps: float = 1e-8):
        if not 0 < factor < 1:
            raise SettingError(f"factor must be in (0, 1), got {factor:g}", factor="plateau_factor")
        if patience < 0 or int(patience) != patience:
            raise SettingError(f"patience must be a non-negative integer, got {patience}", patience="plateau_patience")
        self.base, self.factor, self.patience = base, float(factor), int(patience)
        self.threshold, self.eps = float(threshold), float(eps)
        self.lr = base.base_lr                  # current lr after warmup
        self.best = math.inf
        self.num_bad_epochs = 0

    @property
    def min_lr(self) -> float:
        return self.base.min_lr

    def __call__(self, t: float) -> float:
        return self.base(t) * (self.lr / self.base.base_lr)

    def is_better(self, metric: float) -> bool:
        return metric < self.best * (1.0 - self.threshold)

    def step(self, metric: float) -> None:
        """One epoch's metric (lower is better; NaN counts as no improvement)."""
        metric = float(metric)
        if self.is_better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad_epochs = 0

    def epoch_end(self, metric: float) -> None:
        """The Trainer's call at each epoch's end, with the test loss: ``step(metric)``."""
        self.step(metric)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "num_bad_epochs": self.num_bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best = float(state["lr"]), float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])

    def to_dict(self) -> dict:
        """Settings and state, as the checkpoint's ``schedule["lr"]`` records them."""
        return {**self.base.to_dict(), "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "state": self.state_dict()}
