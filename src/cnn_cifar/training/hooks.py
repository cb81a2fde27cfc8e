"""What happens around the training loop's epochs and steps, as hooks (in the spirit of Chainer's training
extensions): progress bars, checkpoints, history files, the log line, and training features such as the
weights' moving average (``ema.py``). A feature attaches as a hook that owns its state and its part of the
loop, instead of growing the loop."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import ContextManager, Iterator, Protocol

from tqdm.auto import tqdm

from ..data import BatchLoader
from ..errors import SettingError
from ..models.registry import skip_input_gradient
from ..nn import Module
from ..optim import GradScaler, Optimizer
from .checkpoint import Checkpoint, save_checkpoint
from .history import write_history
from .meter import EpochMeter


class TrainerView(Protocol):
    """What a hook sees of the Trainer (``training/trainer.py``): the loop's state and what it saves. Hooks
    are written against this, so a hook's module needs nothing of the loop's."""

    model: Module
    model_name: str
    optimizer: Optimizer
    train_loader: BatchLoader
    scaler: GradScaler | None               # mixed precision's loss scaler (None: float32)
    meter: EpochMeter                       # the epoch's running figures (``meter.read()``)
    checkpoint_dir: Path
    run_info: dict                          # "args" (the run settings), "dataset", "classes"
    epoch: int                              # epochs completed
    step: int                               # steps completed inside the current epoch
    target_epochs: float                    # the epoch count ``fit`` is training to (may be a fraction)
    history: list[dict]
    best_accuracy: float

    @property
    def total_steps(self) -> int: ...       # the run's optimizer steps (a fractional last epoch rounded up)

    @property
    def epoch_steps(self) -> int: ...       # the current epoch's steps (fewer in a fractional last epoch)

    @property
    def last_path(self) -> Path: ...

    @property
    def best_path(self) -> Path: ...

    def checkpoint(self) -> Checkpoint: ...

    def finish(self, reason: str) -> None: ...


class Hook:
    """Called by the Trainer, in the order of its hooks: ``fit_start`` once when ``fit`` begins (after any
    restore), ``epoch_start`` before an epoch's first (or resumed) step, ``after_step`` right after each
    optimizer step (the place to change the weights: a moving average, lookahead), ``final_step`` once after
    the run's last step (the last epoch's, before its evaluation: weights put in order there are evaluated
    and saved; a run ended early by ``finish`` has none), ``step_end`` after each step once its figures are
    counted, ``train_end`` when the steps stop (normally or not), ``epoch_end`` with the epoch's history row
    once it is evaluated and counted, ``fit_end`` when ``fit`` returns or raises (to release files). Each
    default does nothing. ``step_end``'s ``loss`` is a float, or on a GPU a 0-d device array
    (``float(loss)`` reads it: do so only when needed). A hook ends the run early with
    ``trainer.finish(reason)``.

    A hook may provide the weights that are evaluated and saved (``evaluated_weights``: EMA's average); the
    Trainer then saves the training weights beside them (``Checkpoint.training_weights``) and continues
    from those on resume. A hook with state that must survive a resume returns it from ``state_dict`` (plain
    data and host arrays); the checkpoint keeps it under ``hooks[name]`` and ``load_state_dict`` gets it back.

    In data-parallel runs only rank 0 runs the hooks, except those with ``every_rank`` set: the ones that
    change the run's state (the weights' average, early stopping), which must happen on every rank alike."""

    every_rank = False

    @property
    def name(self) -> str:
        """The key of this hook's state in the checkpoint (hooks with state need distinct names)."""
        return type(self).__name__

    def fit_start(self, trainer: TrainerView) -> None:
        pass

    def fit_end(self, trainer: TrainerView) -> None:
        pass

    def epoch_start(self, trainer: TrainerView) -> None:
        pass

    def after_step(self, trainer: TrainerView) -> None:
        pass

    def final_step(self, trainer: TrainerView) -> None:
        pass

    def step_end(self, trainer: TrainerView, loss: float, batch: int) -> None:
        pass

    def train_end(self, trainer: TrainerView) -> None:
        pass

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        pass

    def evaluated_weights(self, trainer: TrainerView, evaluating: bool) -> ContextManager[bool]:
        """A context within which the model holds the weights to evaluate and save (``evaluating``: they are
        about to be evaluated, so measure what they need first; false: only saved); it yields whether it
        replaced the training weights. This default replaces nothing."""
        return _unchanged()

    def state_dict(self) -> dict | None:
        """What must survive a resume (plain data and host arrays), or None: nothing."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore ``state_dict``'s result; None: the checkpoint holds none (a run saved without this hook),
        so start from the restored run. Called by ``Trainer.restore`` while the model holds the checkpoint's
        saved weights (the evaluated ones); the training weights, where a hook provided the evaluated ones,
        are loaded after."""


@contextlib.contextmanager
def _unchanged() -> Iterator[bool]:
    yield False


class ProgressBar(Hook):
    """A tqdm bar per epoch with the running loss, accuracy and images per second. The figures are
    refreshed after the first step, then at most every ``every_s`` seconds and at the epoch's last step: on a
    GPU reading the accuracy is a host synchronisation (``trainer.meter.read()``), which a bar shown to a
    person need not pay every step."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.bar: tqdm | None = None
        self.every_s = every_s
        self._shown = 0.0

    def epoch_start(self, trainer: TrainerView) -> None:
        self.bar = tqdm(total=trainer.epoch_steps, initial=trainer.step,
                        desc=f"epoch {trainer.epoch + 1}/{trainer.target_epochs:g}", unit="batch", leave=False,
                        dynamic_ncols=True)
        self.t0, self.seen0 = time.perf_counter(), trainer.meter.read()["seen"]     # (nothing on the device yet)
        self._shown = 0.0

    def step_end(self, trainer: TrainerView, loss: float, batch: int) -> None:
        self.bar.update(1)
        now = time.perf_counter()
        if self._shown and now - self._shown < self.every_s and self.bar.n < self.bar.total:
            return
        self._shown = now
        p = trainer.meter.read()
        self.bar.set_postfix(loss=f"{p['loss_sum'] / p['seen']:.4f}", acc=f"{100 * p['correct'] / p['seen']:.2f}%",
                             img_s=f"{(p['seen'] - self.seen0) / max(time.perf_counter() - self.t0, 1e-9):.0f}",
                             refresh=False)

    def train_end(self, trainer: TrainerView) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SaveCheckpoints(Hook):
    """<model>_last.pkl every epoch, <model>_best.pkl on a new best test accuracy (both atomic)."""

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        ck = trainer.checkpoint()
        save_checkpoint(trainer.last_path, ck)
        if row["best"]:
            save_checkpoint(trainer.best_path, ck)


class SaveSnapshots(Hook):
    """<model>_epoch<N>.pkl every ``every`` epochs, kept (atomic, like the others); ``--resume`` takes them."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise SettingError(f"SaveSnapshots every must be a positive number of epochs, got {every}",
                               every="save_every")
        self.every = int(every)

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        if trainer.epoch % self.every == 0:
            save_checkpoint(trainer.checkpoint_dir / f"{trainer.model_name}_epoch{trainer.epoch}.pkl",
                            trainer.checkpoint())


class FreezeParameters(Hook):
    """Parameters that train for their first few epochs only: ``{name: epochs}`` by state-dict name
    (``whiten.bias``: 3); from epoch ``epochs`` on (counted from 0) the parameter's ``requires_grad`` is False
    and the optimizer leaves it alone. A function of the epoch, so nothing to save: a resumed run sets the
    same."""

    name = "freeze_parameters"
    every_rank = True

    def __init__(self, epochs_by_name: dict[str, float]):
        self.epochs_by_name = dict(epochs_by_name)

    def epoch_start(self, trainer: TrainerView) -> None:
        params = dict(trainer.model.named_parameters())
        unknown = sorted(set(self.epochs_by_name) - set(params))
        if unknown:
            raise SettingError(f"freeze_after names {', '.join(unknown)}, which {trainer.model_name} does not have "
                               f"(its parameters: {', '.join(list(params)[:6])}, ...)", "freeze_after")
        for name, epochs in self.epochs_by_name.items():
            params[name].requires_grad = trainer.epoch < epochs
        skip_input_gradient(trainer.model)     # layers behind what is now frozen skip their input's gradient


class EarlyStopping(Hook):
    """Ends the run once test accuracy has not improved for ``patience`` epochs (a tie is no improvement).
    Its state is the history's "best" marks, so a resumed run that has already run out of patience stops at
    once, and a larger ``patience`` continues it."""

    every_rank = True

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise SettingError(f"EarlyStopping patience must be a positive number of epochs, got {patience}",
                               patience="early_stop")
        self.patience = int(patience)

    @staticmethod
    def epochs_without_improvement(history: list[dict]) -> int:
        marks = [bool(r.get("best")) for r in history]
        return len(marks) - 1 - max((i for i, b in enumerate(marks) if b), default=-1)

    def _check(self, trainer: TrainerView) -> None:
        stale = self.epochs_without_improvement(trainer.history)
        if trainer.history and stale >= self.patience:
            trainer.finish(f"early stop: test accuracy has not improved for {stale} epochs (best "
                           f"{100 * trainer.best_accuracy:.2f}% at epoch {len(trainer.history) - stale})")

    def fit_start(self, trainer: TrainerView) -> None:
        self._check(trainer)

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        self._check(trainer)


class WriteHistory(Hook):
    """<model>_history.csv and .jsonl beside the checkpoints."""

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        write_history(trainer.checkpoint_dir, trainer.model_name, trainer.history)


class LogLine(Hook):
    """The one summary line per epoch, on stdout and appended to a log file (if given). Before its first line,
    each run (a resumed one too) writes its settings into the log file, so the log says what produced it; a
    run that ends before its first epoch adds nothing."""

    def __init__(self, log_path: str | Path | None = None) -> None:
        self.log_path = Path(log_path) if log_path else None
        self.header_written = False

    def epoch_end(self, trainer: TrainerView, row: dict) -> None:
        line = format_row(row, trainer.target_epochs)
        print(line, flush=True)
        if self.log_path is not None:
            lines = [line]
            if not self.header_written:
                lines[:0] = format_settings(trainer.run_info.get("args", {}))
                self.header_written = True
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write("".join(s + "\n" for s in lines))


def format_settings(settings: dict) -> list[str]:
    """Every setting of a run, one per line, as its flag's name and value (the --verbose table and the log's
    header)."""
    width = max((len(k) for k in settings), default=0)
    lines = ["settings:"]
    for k, v in settings.items():
        if isinstance(v, (list, tuple)):
            v = " ".join(f"{e:g}" if isinstance(e, float) else str(e) for e in v)
        lines.append(f"  {k.replace('_', '-'):<{width}}  {v}")
    return lines


def format_row(row: dict, epochs: float) -> str:
    """The one summary line per epoch."""
    return (f"epoch {row['epoch']:>3}/{epochs:g}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%"
            f"  test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:6.2f}%  lr {row['lr']:.6f}"
            f"  dropout {row['dropout']:.3f}  {row['seconds']:6.1f}s{'  *best*' if row['best'] else ''}")
