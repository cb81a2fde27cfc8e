"""Training loop, evaluation, checkpoints, metrics and history files."""
from .checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, save_checkpoint
from .history import FIELDS, history_paths, write_history
from .metrics import classification_report, confusion_matrix, topk_correct
from .trainer import (NonFiniteLoss, StopFlag, Trainer, TrainingInterrupted, evaluate, format_row,
                      interrupt_guard)

__all__ = ["FIELDS", "FORMAT", "VERSION", "CheckpointError", "NonFiniteLoss", "StopFlag", "Trainer",
           "TrainingInterrupted", "classification_report", "confusion_matrix", "evaluate", "format_row",
           "history_paths", "interrupt_guard", "load_checkpoint", "save_checkpoint", "topk_correct",
           "write_history"]
