"""What a Trainer is built from, in five groups: what is trained (``Learner``), the data (``Loaders``), the
schedules, where the run writes (``RunOutput``) and how the steps run (``LoopOptions``); hooks come beside
them. Plain records: the Trainer takes their contents apart."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import nn
from ..data import BatchLoader
from ..distributed import DataParallel
from ..optim import DropoutSchedule, GradScaler, LRSchedule, Optimizer, ReduceLROnPlateau
from .interrupt import StopFlag
from .mixing import MixedCrossEntropy


@dataclass
class Learner:
    """What is trained: ``model``, registered as ``name`` (which names its checkpoint files and rebuilds it
    from them), its ``optimizer`` and the loss (``criterion``)."""
    name: str
    model: nn.Module
    optimizer: Optimizer
    criterion: nn.SoftmaxCrossEntropy | MixedCrossEntropy


@dataclass
class Loaders:
    """The training batches, the test batches evaluated after each epoch, and the number of classes. With
    several ranks: this rank's shard of each global batch, and this rank's part of the test set."""
    train: BatchLoader
    test: BatchLoader
    num_classes: int


@dataclass
class Schedules:
    """The learning rate, set before every step (ReduceLROnPlateau also follows the test loss), and the
    dropout rate, set before every epoch."""
    lr: LRSchedule | ReduceLROnPlateau
    dropout: DropoutSchedule


@dataclass
class RunOutput:
    """Where the run writes: checkpoints and history files in ``checkpoint_dir``, the epoch lines appended to
    ``log_path`` (after the run's settings); ``run_info`` is saved with the weights: "args" (the run
    settings), "dataset", "classes"."""
    checkpoint_dir: str | Path
    log_path: str | Path | None = None
    run_info: dict | None = None


@dataclass
class LoopOptions:
    """How the steps run: ``quiet`` (no progress bars), ``clip_grad_norm`` (the gradients' global L2 norm is
    clipped to it in every step), ``scaler`` (an enabled GradScaler: mixed precision), ``parallel`` (a
    distributed.DataParallel), ``stop`` (the flag Ctrl-C and SIGTERM set; a fresh one if None)."""
    quiet: bool = False
    clip_grad_norm: float | None = None
    scaler: GradScaler | None = None
    parallel: DataParallel | None = None
    stop: StopFlag | None = None
