"""Plots of training histories and evaluation results."""
from .plots import (HistoryError, plot_comparison, plot_confusion, plot_evaluation, plot_per_class, plot_runs,
                    plot_training_progress, read_history, summary_text, write_summary)

__all__ = ["HistoryError", "plot_comparison", "plot_confusion", "plot_evaluation", "plot_per_class", "plot_runs",
           "plot_training_progress", "read_history", "summary_text", "write_summary"]
