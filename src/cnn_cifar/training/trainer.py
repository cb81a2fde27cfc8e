"""The training loop: epochs of optimizer steps with per-step LR and per-epoch dropout, evaluation, and the
hooks that save, log, report and add training features; exact resume (also from the middle of an epoch after
Ctrl-C). The loop names no feature: what a feature does to the loop is a hook's (``hooks.Hook``)."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import backend, nn
from ..backend import Array
from ..data.augment import MixedTargets
from ..distributed import SingleProcess
from ..optim import total_steps
from .checkpoint import Checkpoint, save_checkpoint
from .evaluation import evaluate
from .hooks import Hook, LogLine, ProgressBar, SaveCheckpoints, WriteHistory
from .interrupt import StopFlag, TrainingInterrupted
from .meter import EpochMeter
from .parts import Learner, Loaders, LoopOptions, RunOutput, Schedules
from .step import NonFiniteLoss, train_step


def _listed(values) -> list | None:
    return None if values is None else [float(v) for v in values]


class Trainer:
    """Owns the loop state (epoch, step, random streams, history, best accuracy, the epoch's running figures)
    and runs the hooks.

    The default hooks, in order: a progress bar (unless ``quiet``), then at each epoch's end the
    checkpoints, the history files and the summary line (also appended to the log); ``hooks`` adds more after
    them: training features (``ema.ModelEMA``), run control (snapshots, early stopping), loggers, plots. A
    hook may change the weights after each step, provide the weights that are evaluated and saved (EMA's
    average: the checkpoints' weights are then those, with the training weights beside them for ``restore``)
    and keep its state in the checkpoint (see ``hooks.Hook``).

    With an enabled scaler (mixed precision) the steps and the evaluation run under ``nn.autocast``; the loss
    scale and its growth counter are saved in the checkpoint's ``grad_scaler``.

    With ``parallel`` (a distributed.DataParallel) every rank runs the loop in step: losses, counts,
    evaluation and stop requests are agreed over ranks, so all ranks take the same decisions; only rank 0
    runs the hooks that print or write (the others keep those marked ``every_rank``).
    """

    def __init__(self, learner: Learner, data: Loaders, schedules: Schedules, output: RunOutput,
                 options: LoopOptions | None = None, hooks: Sequence[Hook] = ()):
        options = options or LoopOptions()
        self.model, self.model_name = learner.model, learner.name
        self.optimizer, self.criterion = learner.optimizer, learner.criterion
        self.train_loader, self.test_loader, self.num_classes = data.train, data.test, data.num_classes
        self.lr_schedule, self.dropout_schedule = schedules.lr, schedules.dropout
        self.checkpoint_dir = Path(output.checkpoint_dir)
        self.run_info = output.run_info or {}
        self.quiet, self.clip_grad_norm = options.quiet, options.clip_grad_norm
        self.scaler = options.scaler if options.scaler is not None and options.scaler.enabled else None
        self.parallel = options.parallel
        self.comm = self.parallel.comm if self.parallel is not None else SingleProcess()
        self.stop = options.stop or StopFlag()
        self.hooks: list[Hook] = ([] if self.quiet else [ProgressBar()]) + [
            SaveCheckpoints(), WriteHistory(), LogLine(output.log_path)] + list(hooks)
        if not self.comm.is_main:
            self.hooks = [h for h in self.hooks if h.every_rank]
        self.check_every = 50          # GPU steps between reads of the device's running figures (NaN check)
        self.epoch = 0                 # epochs completed
        self.step = 0                  # steps completed inside the current epoch
        self.target_epochs: float = 0  # the epoch count fit() is training to (a fraction: its steps rounded up)
        self.history: list[dict] = []
        self.best_accuracy = -1.0
        self.finished: str | None = None  # why the run ended before its last epoch (a hook's finish())
        self.dropout_p = self.dropout_schedule.rate
        self.epoch_rng_state: dict | None = None
        self.meter = EpochMeter(self._stopped_at)

    def _stopped_at(self, step: int) -> str:
        """The end of a non-finite loss's message: where it happened and what was left alone."""
        return (f"at epoch {self.epoch + 1}, step {step}; training stopped (checkpoints in {self.checkpoint_dir} "
                f"left as they were)")

    # ----------------------------------------------------------------- checkpoints
    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_last.pkl"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_best.pkl"

    def checkpoint(self) -> Checkpoint:
        """The whole state, as saved to <model>_last.pkl: the evaluated weights (a hook's, where one provides
        them, with the training weights beside them), the hooks', optimizer's and loss scaler's state,
        schedules, position, the epoch's running figures, history, random streams and the run's settings."""
        training = self.model.state_dict()
        with self.evaluated_weights(evaluating=False) as replaced:
            weights = self.model.state_dict() if replaced else training
        hooks = {h.name: state for h in self.hooks if (state := h.state_dict()) is not None}
        return Checkpoint(
            model=self.model_name, state_dict=weights, epoch=self.epoch, step=self.step,
            model_config=dict(getattr(self.model, "config", {})), optimizer=self.optimizer.state_dict(),
            training_weights=training if replaced else None, hooks=hooks,
            grad_scaler=self.scaler.state_dict() if self.scaler is not None else None,
            schedule={"lr": self.lr_schedule.to_dict(), "dropout": self.dropout_schedule.to_dict(),
                      "dropout_p": self.dropout_p},
            partial=self.meter.read(), best_accuracy=self.best_accuracy, history=copy.deepcopy(self.history),
            rng={"data": self.train_loader.rng.bit_generator.state, "epoch_start": self.epoch_rng_state,
                 "dropout": nn.random.get_state()},
            args=dict(self.run_info.get("args", {})), dataset=self.run_info.get("dataset"),
            classes=self.run_info.get("classes"), mean=_listed(self.train_loader.mean),
            std=_listed(self.train_loader.std))

    def restore(self, ck: Checkpoint) -> None:
        """Continue from a checkpoint's state (weights, hooks, optimizer, loss scale, random streams, position,
        history). The hooks load their state while the model holds the checkpoint's evaluated weights (a
        hook that provided them takes them there); training continues from the training weights."""
        self.model.load_state_dict(ck.state_dict)
        for h in self.hooks:
            h.load_state_dict(ck.hooks.get(h.name))
        if ck.training_weights is not None:
            self.model.load_state_dict(ck.training_weights)
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(ck.optimizer)
        if self.scaler is not None and ck.grad_scaler:
            self.scaler.load_state_dict(ck.grad_scaler)
        self.epoch, self.step = ck.epoch, ck.step
        self.history = list(ck.history)
        self.best_accuracy = ck.best_accuracy
        self.dropout_p = float(ck.schedule.get("dropout_p", self.dropout_schedule.rate))
        lr_state = (ck.schedule.get("lr") or {}).get("state")
        if lr_state is not None:
            self.lr_schedule.load_state_dict(lr_state)      # ReduceLROnPlateau: best, bad epochs, lr
        self.meter.reset(ck.partial)
        if ck.rng.get("data") is not None:
            self.train_loader.rng.bit_generator.state = ck.rng["data"]
        self.epoch_rng_state = ck.rng.get("epoch_start")
        nn.random.set_state(ck.rng.get("dropout"))

    def finish(self, reason: str) -> None:
        """End the run after the current epoch (early stopping); ``reason`` is printed once."""
        if self.finished is None:
            print(reason, flush=True)
        self.finished = reason

    def _interrupt(self) -> None:
        if self.comm.is_main:
            save_checkpoint(self.last_path, self.checkpoint())
        self.comm.barrier()                         # no rank exits while rank 0 is still writing
        raise TrainingInterrupted(self.last_path, self.epoch, self.step)

    def _stop_requested(self) -> bool:
        """Whether to stop now: this process's Ctrl-C/SIGTERM, or with several ranks any rank's (agreed by
        all, each taking the signal that asked so the exit status is the same)."""
        if self.parallel is None:
            return self.stop.requested
        return self._agreed_stop(self.parallel.agree_stop(self._pending_signal()))

    def _pending_signal(self) -> int | None:
        """This rank's stop request, for the step's agreement (none is asked for in one process)."""
        return self.stop.signum if self.parallel is not None and self.stop.requested else None

    def _agreed_stop(self, signum: int | None) -> bool:
        if signum is not None:
            self.stop.set(signum)
        return signum is not None

    # ----------------------------------------------------------------- loop
    @property
    def total_steps(self) -> int:
        """The run's optimizer steps: ``target_epochs`` epochs, a fraction of one rounded up to whole steps."""
        return total_steps(self.target_epochs, len(self.train_loader))

    @property
    def epoch_steps(self) -> int:
        """Steps in the current epoch: the loader's, fewer in a fractional last epoch."""
        return min(len(self.train_loader), self.total_steps - self.epoch * len(self.train_loader))

    @property
    def total_epochs(self) -> int:
        """Epochs the run goes through, the fractional last one included."""
        return math.ceil(self.total_steps / len(self.train_loader))

    def fit(self, epochs: float) -> list[dict]:
        """Train until ``epochs`` epochs are complete (a fraction: until that many steps, rounded up, are done);
        returns the history."""
        if not epochs > 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        self.target_epochs = epochs
        for h in self.hooks:
            h.fit_start(self)
        try:
            # Overflow shows up as a non-finite loss, which is reported by the loop itself.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                while self.epoch < self.total_epochs and self.finished is None:
                    self._begin_epoch()
                    self.meter.start_clock()
                    lr = self._run_steps() if self.step < self.epoch_steps else self.optimizer.lr
                    self.meter.stop_clock()
                    self._end_epoch(lr)
            self.comm.barrier()                    # the last checkpoint is written before any rank exits
        finally:
            for h in self.hooks:
                h.fit_end(self)
        return self.history

    def _begin_epoch(self) -> None:
        """Dropout rate and data-stream position for the epoch about to run (or to resume)."""
        rng = self.train_loader.rng
        if self.step == 0:
            prev = self.history[-1] if self.history else {}
            self.dropout_p = self.dropout_schedule.next_rate(self.epoch, self.dropout_p, prev.get("train_acc"),
                                                             prev.get("test_acc"))
            self.epoch_rng_state = copy.deepcopy(rng.bit_generator.state)
            self.meter.reset()
        elif self.step < self.epoch_steps:
            # Resuming inside an epoch: replay the data stream from the epoch's start to this step. (Stopped
            # after the last step, in evaluation, the saved stream is already at the epoch's end.)
            rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        self.train_loader.set_epoch(self.epoch)
        nn.set_dropout(self.model, self.dropout_p)
        self.model.train()

    def _run_steps(self) -> float:
        """The epoch's remaining training steps; returns the last learning rate used."""
        steps, last = len(self.train_loader), self.epoch_steps
        batches = iter(self.train_loader)
        for _ in range(self.step):
            next(batches)
        for h in self.hooks:
            h.epoch_start(self)
        lr = self.optimizer.lr
        try:
            for x, y in batches:
                lr = self.optimizer.lr = self.lr_schedule(self.epoch + (self.step + 1) / steps)
                loss, seen, stop = self._step(x, y)
                for h in self.hooks:
                    h.step_end(self, loss, seen)
                if self.meter.unchecked and (self.step % self.check_every == 0 or self.step == last):
                    self.meter.read()                       # a non-finite loss stops the run here
                if stop:
                    self.meter.stop_clock()
                    self._interrupt()
                if self.step >= last:                        # a fractional last epoch ends early
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()                                      # a loader's prefetch stops with its iterator
            for h in self.hooks:
                h.train_end(self)
        return lr

    def _step(self, x: Array, y: Array | MixedTargets) -> tuple[float | Array, int, bool]:
        """One optimizer step, what the hooks do after it, and its figures counted. Returns the loss, the
        images counted (the global batch's with several ranks) and whether to stop."""
        # On a GPU, one process without loss scaling or clipping: no host read per step (train_step(defer)).
        defer = self.parallel is None and self.scaler is None and not self.clip_grad_norm and not backend.is_host(x)
        try:
            loss, logits = train_step(self.model, self.criterion, self.optimizer, x, y, self.clip_grad_norm,
                                      self.parallel, self._pending_signal(), self.scaler, defer=defer)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"{exc} {self._stopped_at(self.step + 1)}") from None
        if getattr(self.criterion, "reduction", "mean") == "sum":
            loss = loss / len(y)                             # the figures are per image either way
        self.step += 1
        for h in self.hooks:
            h.after_step(self)
        if self.step == self.epoch_steps and self.epoch + 1 >= self.total_epochs:
            for h in self.hooks:
                h.final_step(self)                          # the run's last step
        if self.parallel is not None:                       # the global batch's, agreed in the step
            self.meter.add(loss, self.parallel.correct, self.parallel.seen)
            return loss, self.parallel.seen, self._agreed_stop(self.parallel.stop_signum)
        self.meter.count(loss, logits, y, self.step)
        return loss, len(y), self.stop.requested

    def _end_epoch(self, lr: float) -> None:
        """Evaluate (the weights a hook provides, where one does), count the epoch, and run the end-of-epoch
        hooks."""
        t1 = time.perf_counter()
        with nn.autocast(self.scaler is not None), self.evaluated_weights(evaluating=True):
            ev = evaluate(self.model, self.test_loader, self.criterion, self.num_classes,
                          progress=not self.quiet and self.comm.is_main, desc="test",
                          stop=self.stop if self.comm.size == 1 else None, comm=self.comm)
        if ev is None or (self.parallel is not None and self._stop_requested()):
            self._interrupt()
        p = self.meter.read()
        row = {"epoch": self.epoch + 1, "train_loss": p["loss_sum"] / max(p["seen"], 1),
               "train_acc": p["correct"] / max(p["seen"], 1), "test_loss": ev["loss"],
               "test_acc": ev["accuracy"], "lr": lr, "dropout": self.dropout_p,
               "seconds": p["seconds"] + time.perf_counter() - t1, "train_seconds": p["seconds"],
               "best": ev["accuracy"] > self.best_accuracy}
        self.history.append(row)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_rng_state = None
        if row["best"]:
            self.best_accuracy = ev["accuracy"]
        self.lr_schedule.epoch_end(row["test_loss"])         # ReduceLROnPlateau follows the test loss
        for h in self.hooks:
            h.epoch_end(self, row)
        if self._stop_requested():
            raise TrainingInterrupted(self.last_path, self.epoch, 0)

    @contextlib.contextmanager
    def evaluated_weights(self, evaluating: bool) -> Iterator[bool]:
        """Within the block the model holds the weights to evaluate and save: those a hook provides, if one
        does (``evaluating``: for an evaluation, so measured first). Yields whether they replace the training
        weights."""
        with contextlib.ExitStack() as stack:
            yield any([stack.enter_context(h.evaluated_weights(self, evaluating)) for h in self.hooks])
