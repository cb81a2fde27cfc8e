"""Optimizers, gradient clipping, learning-rate schedules and dropout schedules."""
from .clip import clip_grad_norm_, grad_norm
from .grad_scaler import GradScaler
from .optimizers import ADAMW_DEFAULT_WEIGHT_DECAY, OPTIMIZERS, SGD, Adam, AdamW, Optimizer, build_optimizer
from .plateau import ReduceLROnPlateau
from .schedules import DROPOUT_SCHEDULES, LR_SCHEDULES, DropoutSchedule, LRSchedule, lr_at, total_steps

__all__ = ["ADAMW_DEFAULT_WEIGHT_DECAY", "OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "build_optimizer",
           "clip_grad_norm_", "grad_norm", "GradScaler", "DROPOUT_SCHEDULES", "LR_SCHEDULES", "DropoutSchedule",
           "LRSchedule", "ReduceLROnPlateau", "lr_at", "total_steps"]
