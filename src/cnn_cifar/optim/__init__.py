"""Optimizers, learning-rate schedules and dropout schedules."""
from .optimizers import SGD, Adam, Optimizer
from .schedules import DROPOUT_SCHEDULES, LR_SCHEDULES, DropoutSchedule, LRSchedule, lr_at

__all__ = ["SGD", "Adam", "Optimizer", "DROPOUT_SCHEDULES", "LR_SCHEDULES", "DropoutSchedule", "LRSchedule",
           "lr_at"]
