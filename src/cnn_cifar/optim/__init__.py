"""Optimizers, learning-rate schedules and dropout schedules."""
from .optimizers import OPTIMIZERS, SGD, Adam, Optimizer, build_optimizer
from .plateau import ReduceLROnPlateau
from .schedules import DROPOUT_SCHEDULES, LR_SCHEDULES, DropoutSchedule, LRSchedule, lr_at

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "build_optimizer", "DROPOUT_SCHEDULES", "LR_SCHEDULES",
           "DropoutSchedule", "LRSchedule", "ReduceLROnPlateau", "lr_at"]
