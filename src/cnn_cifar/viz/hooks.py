"""A training hook that redraws the training-progress figure after every epoch (``train_cli --plot``)."""
from __future__ import annotations

import os
from pathlib import Path

from ..training import Hook, TrainerView
from .plots import plot_training_progress


class PlotProgress(Hook):
    """Rewrites <out_dir>/<model>_training_progress.png at the end of each epoch."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        plot_training_progress(trainer.history, self.out_dir, trainer.model_name)
