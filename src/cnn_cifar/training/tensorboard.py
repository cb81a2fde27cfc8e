"""TensorBoard scalars through tensorboardX (an optional dependency: ``uv sync --group tensorboard``)."""
from __future__ import annotations

from pathlib import Path

from .hooks import Hook, TrainerView

MISSING = "TensorBoard logging needs tensorboardX, which is not installed: uv sync --group tensorboard " \
          "(or pip install tensorboardX)"


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401 (imported only to see whether it is installed)
    except ImportError:
        return False
    return True


class TensorBoardLogger(Hook):
    """Per epoch: train/test loss and accuracy, lr, dropout and seconds at step = epoch number. Every
    ``every`` optimizer steps (0: never): the batch loss and the lr at step = optimizer steps so far, and
    under mixed precision the loss scale and the count of skipped (overflowed) steps. A
    resumed run purges what a stopped run wrote after the point it resumes from, so nothing is logged twice.
    """

    def __init__(self, log_dir: str | Path, every: int = 50):
        if not tensorboard_available():
            raise ImportError(MISSING)
        self.log_dir, self.every = Path(log_dir), int(every)
        self.writer = None

    def _global_step(self, trainer: TrainerView) -> int:
        return trainer.epoch * len(trainer.train_loader) + trainer.step

    def fit_start(self, trainer: TrainerView) -> None:
        from tensorboardX import SummaryWriter
        step = self._global_step(trainer)
        # one file per start (named by its first step), so runs within a second never share a file name
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step if step else None,
                                    filename_suffix=f".from{step}")

    def step_end(self, trainer: TrainerView, loss: float, batch: int) -> None:
        step = self._global_step(trainer)
        if self.every and step % self.every == 0:
            self.writer.add_scalar("step/loss", float(loss), step)     # (a device array on a GPU: read here)
            self.writer.add_scalar("step/lr", trainer.optimizer.lr, step)
            if trainer.scaler is not None:
                self.writer.add_scalar("step/loss_scale", trainer.scaler.get_scale(), step)
                self.writer.add_scalar("step/skipped_steps", trainer.scaler.skipped, step)

    def train_end(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.flush()

    def fit_end(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        e = row["epoch"]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            split, what = key.split("_")
            self.writer.add_scalar(f"{split}/{'accuracy' if what == 'acc' else what}", row[key], e)
        for key in ("lr", "dropout", "seconds"):
            self.writer.add_scalar(f"epoch/{key}", row[key], e)
        self.writer.flush()
