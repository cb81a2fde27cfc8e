"""Training: run settings, the loop and its hooks, one train step, evaluation, checkpoints, history, metrics."""
from .checkpoint import (
    FORMAT,
    VERSION,
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from .config import RunConfig, resolve
from .evaluation import evaluate, evaluate_checkpoint
from .history import COLUMNS, HistoryError, history_paths, read_history, write_history
from .hooks import Hook, LogLine, ProgressBar, SaveCheckpoints, TrainerView, WriteHistory, format_row
from .interrupt import StopFlag, TrainingInterrupted, interrupt_guard
from .lookahead import Lookahead
from .meter import EpochMeter
from .metrics import classification_report, confusion_matrix, topk_correct
from .parts import Learner, Loaders, LoopOptions, RunOutput, Schedules
from .step import NonFiniteLoss, train_step
from .trainer import Trainer

__all__ = ["COLUMNS", "FORMAT", "VERSION", "Checkpoint", "CheckpointError", "EpochMeter", "HistoryError", "Hook",
           "Learner", "Loaders", "LogLine", "Lookahead", "LoopOptions", "NonFiniteLoss", "ProgressBar", "RunConfig",
           "RunOutput",
           "SaveCheckpoints", "Schedules", "StopFlag", "Trainer", "TrainerView", "TrainingInterrupted",
           "WriteHistory", "classification_report", "confusion_matrix", "evaluate", "evaluate_checkpoint",
           "find_checkpoint", "format_row", "history_paths", "interrupt_guard", "load_checkpoint", "read_history",
           "resolve", "save_checkpoint", "topk_correct", "train_step", "transfer_weights", "write_history"]
