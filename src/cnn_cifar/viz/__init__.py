"""Plots of training histories and evaluation results, and the training hook that refreshes them."""
from ..training.history import HistoryError, read_history
from .augment import show_augment
from .hooks import PlotProgress
from .plots import (
    plot_comparison,
    plot_confusion,
    plot_evaluation,
    plot_per_class,
    plot_runs,
    plot_training_progress,
    summary_text,
    write_summary,
)

__all__ = ["HistoryError", "PlotProgress", "plot_comparison", "plot_confusion", "plot_evaluation", "plot_per_class",
           "plot_runs", "plot_training_progress", "read_history", "show_augment", "summary_text", "write_summary"]
