"""The training loop: epochs of optimizer steps with per-step LR and per-epoch dropout, evaluation, and the
hooks that save, log and report; exact resume (also from the middle of an epoch after Ctrl-C)."""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import nn, runtime
from ..backend import Array, get_array_module, to_numpy
from ..data import BatchLoader
from ..distributed.comm import SingleProcess
from ..optim import DropoutSchedule, GradScaler, LRSchedule, Optimizer, ReduceLROnPlateau
from .checkpoint import Checkpoint, save_checkpoint
from .ema import ModelEMA
from .evaluation import evaluate
from .hooks import Hook, LogLine, ProgressBar, SaveCheckpoints, WriteHistory
from .interrupt import StopFlag, TrainingInterrupted
from .mixing import correct_count, correct_hits
from .step import NonFiniteLoss, train_step

if TYPE_CHECKING:
    from ..distributed import DataParallel


def _listed(values) -> list | None:
    return None if values is None else [float(v) for v in values]


class Trainer:
    """Owns the loop state (epoch, step, random streams, history, best accuracy) and runs the hooks.

    The default hooks, in order: a progress bar (unless ``quiet``), then at each epoch's end the
    checkpoints, the history files and the summary line (also appended to ``log_path``); ``hooks`` adds
    more after them (plots, say).

    ``clip_grad_norm`` clips the gradients' global L2 norm in every step. With ``ema`` (a ModelEMA of
    ``model``) the average is updated after every step, has its batch-norm statistics measured (given the
    ModelEMA ``bn_batches``) and is evaluated instead of the training weights, and is saved as the
    checkpoints' weights (so <model>_best.pkl holds the best average); the training weights and the
    average's step count go in ``optimizer["ema"]`` for ``restore``.

    With an enabled ``scaler`` (a GradScaler: mixed precision) the steps and the evaluation run under
    ``nn.autocast``; the loss scale and its growth counter are saved in ``optimizer["grad_scaler"]``.

    With ``parallel`` (a distributed.DataParallel; the train loader gives this rank's shard of each global
    batch, the test loader this rank's part of the test set) every rank runs the loop in step: losses,
    counts, evaluation and stop requests are agreed over ranks, so all ranks take the same decisions; only
    rank 0 runs the hooks that print or write (the others keep those marked ``every_rank``).
    """

    def __init__(self, model: nn.Module, model_name: str, optimizer: Optimizer,
                 lr_schedule: LRSchedule | ReduceLROnPlateau,
                 dropout_schedule: DropoutSchedule, criterion: nn.SoftmaxCrossEntropy, train_loader: BatchLoader,
                 test_loader: BatchLoader, num_classes: int, checkpoint_dir: str | Path,
                 log_path: str | Path | None = None, run_info: dict | None = None, quiet: bool = False,
                 hooks: list[Hook] | None = None, stop: StopFlag | None = None,
                 clip_grad_norm: float | None = None, ema: ModelEMA | None = None,
                 parallel: DataParallel | None = None, scaler: GradScaler | None = None):
        self.model, self.model_name, self.optimizer = model, model_name, optimizer
        self.lr_schedule, self.dropout_schedule, self.criterion = lr_schedule, dropout_schedule, criterion
        self.train_loader, self.test_loader, self.num_classes = train_loader, test_loader, num_classes
        self.checkpoint_dir = Path(checkpoint_dir)
        self.run_info = run_info or {}          # args (run settings), dataset, classes: saved with the weights
        self.quiet = quiet
        self.hooks: list[Hook] = ([] if quiet else [ProgressBar()]) + [
            SaveCheckpoints(), WriteHistory(), LogLine(log_path)] + list(hooks or [])
        self.clip_grad_norm, self.ema = clip_grad_norm, ema
        self.check_every = 50          # GPU steps between reads of the device's running figures (NaN check)
        self.scaler = scaler if scaler is not None and scaler.enabled else None
        if ema is not None:
            self.hooks.insert(0, ema)               # averaged right after each step
        self.parallel = parallel
        self.comm = parallel.comm if parallel is not None else SingleProcess()
        if not self.comm.is_main:
            self.hooks = [h for h in self.hooks if h.every_rank]
        self.stop = stop or StopFlag()
        self.epoch = 0                 # epochs completed
        self.step = 0                  # steps completed inside the current epoch
        self.target_epochs = 0         # the epoch count fit() is training to
        self.history: list[dict] = []
        self.best_accuracy = -1.0
        self.finished: str | None = None  # why the run ended before its last epoch (a hook's finish())
        self.dropout_p = dropout_schedule.rate
        self.epoch_rng_state: dict | None = None
        self.partial = self._fresh_partial()
        # On a GPU the step's figures stay on the device until read (read_partial): 0-d arrays under "correct"
        # (predictions), "loss_sum" and "bad_step" (the first step whose loss was not finite; 0: none).
        self._pending: dict[str, Array] = {}
        self._t0 = 0.0                 # when the current epoch's steps started (for its seconds)

    @staticmethod
    def _fresh_partial() -> dict:
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}

    def read_partial(self) -> dict:
        """The epoch's running sums (``partial``), with what a GPU has counted since the last read folded in:
        one host read, where reading every step would stall the device every step. Raises NonFiniteLoss if a
        step's loss was not finite (that step's update was skipped on the device)."""
        if not self._pending:
            return self.partial
        keys = list(self._pending)
        xp = get_array_module(self._pending[keys[0]])
        vals = dict(zip(keys, to_numpy(xp.stack([self._pending[k].astype(xp.float64) for k in keys]))))
        self._pending = {}
        self.partial["correct"] += int(vals["correct"])
        self.partial["loss_sum"] += float(vals.get("loss_sum", 0.0))
        if vals.get("bad_step", 0) > 0:
            raise NonFiniteLoss(f"loss became non-finite (NaN or infinite) at epoch {self.epoch + 1}, step "
                                f"{int(vals['bad_step'])}; training stopped (checkpoints in {self.checkpoint_dir} "
                                f"left as they were)")
        return self.partial

    def _add_pending(self, key: str, value: Array) -> None:
        self._pending[key] = value if key not in self._pending else self._pending[key] + value

    def _count_on_device(self, loss: Array | None, logits: Array, y, seen: int) -> None:
        """A GPU step's correct predictions and (given ``loss``, a device array) its loss and finiteness,
        added up on the device (no host read)."""
        self._add_pending("correct", correct_hits(logits, y))
        if loss is None:
            return
        xp = get_array_module(logits)
        finite = xp.isfinite(loss)
        self._add_pending("loss_sum", xp.where(finite, loss * seen, 0.0))
        here = xp.where(finite, 0, self.step)
        bad = self._pending.get("bad_step")
        self._pending["bad_step"] = here if bad is None else xp.where(bad > 0, bad, here)

    # ----------------------------------------------------------------- checkpoints
    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_last.pkl"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_best.pkl"

    def checkpoint(self) -> Checkpoint:
        """The whole state, as saved to <model>_last.pkl."""
        weights, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        if self.ema is not None:                   # the evaluated weights are the average's
            optimizer["ema"] = {**self.ema.state_dict(), "training_weights": weights}
            weights = self.ema.weights()
        if self.scaler is not None:
            optimizer["grad_scaler"] = self.scaler.state_dict()
        return Checkpoint(
            model=self.model_name, state_dict=weights, epoch=self.epoch, step=self.step,
            model_config=dict(getattr(self.model, "config", {})), optimizer=optimizer,
            schedule={"lr": self.lr_schedule.to_dict(), "dropout": self.dropout_schedule.to_dict(),
                      "dropout_p": self.dropout_p},
            partial=dict(self.read_partial()), best_accuracy=self.best_accuracy, history=copy.deepcopy(self.history),
            rng={"data": self.train_loader.rng.bit_generator.state, "epoch_start": self.epoch_rng_state,
                 "dropout": nn.random.get_state()},
            args=dict(self.run_info.get("args", {})), dataset=self.run_info.get("dataset"),
            classes=self.run_info.get("classes"), mean=_listed(self.train_loader.mean),
            std=_listed(self.train_loader.std))

    def restore(self, ck: Checkpoint) -> None:
        """Continue from a checkpoint's state (model, optimizer, random streams, position, history)."""
        ema = (ck.optimizer or {}).get("ema")       # a run with --ema: state_dict is the average
        self.model.load_state_dict(ema["training_weights"] if ema else ck.state_dict)
        if self.ema is not None:
            if ema:
                self.ema.load_weights(ck.state_dict, ema["updates"])
            else:
                self.ema.reset()                    # averaging starts now, from the restored weights
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(ck.optimizer)
            if self.scaler is not None and ck.optimizer.get("grad_scaler"):
                self.scaler.load_state_dict(ck.optimizer["grad_scaler"])
        self.epoch, self.step = ck.epoch, ck.step
        self.history = list(ck.history)
        self.best_accuracy = ck.best_accuracy
        self.dropout_p = float(ck.schedule.get("dropout_p", self.dropout_schedule.rate))
        lr_state = (ck.schedule.get("lr") or {}).get("state")
        if lr_state is not None and hasattr(self.lr_schedule, "load_state_dict"):
            self.lr_schedule.load_state_dict(lr_state)      # ReduceLROnPlateau: best, bad epochs, lr
        self.partial = dict(ck.partial or self._fresh_partial())
        self._pending = {}
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
    def fit(self, epochs: int) -> list[dict]:
        """Train until ``epochs`` epochs are complete; returns the history."""
        self.target_epochs = epochs
        for h in self.hooks:
            h.fit_start(self)
        try:
            # Overflow shows up as a non-finite loss, which is reported by the loop itself.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                while self.epoch < epochs and self.finished is None:
                    self._begin_epoch()
                    self._t0 = time.perf_counter()
                    lr = self._run_steps() if self.step < len(self.train_loader) else self.optimizer.lr
                    self.partial["seconds"] += time.perf_counter() - self._t0
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
            self.partial = self._fresh_partial()
            self._pending = {}
        elif self.step < len(self.train_loader):
            # Resuming inside an epoch: replay the data stream from the epoch's start to this step. (Stopped
            # after the last step, in evaluation, the saved stream is already at the epoch's end.)
            rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        nn.set_dropout(self.model, self.dropout_p)
        self.model.train()

    def _run_steps(self) -> float:
        """The epoch's remaining training steps; returns the last learning rate used."""
        steps = len(self.train_loader)
        epoch = self.epoch
        batches = iter(self.train_loader)
        for _ in range(self.step):
            next(batches)
        for h in self.hooks:
            h.epoch_start(self)
        lr = self.optimizer.lr
        # On a GPU, one process without loss scaling or clipping: no host read per step (train_step(defer)).
        defer = self.parallel is None and self.scaler is None and not self.clip_grad_norm
        try:
            for x, y in batches:
                lr = self.lr_schedule(epoch + (self.step + 1) / steps)
                self.optimizer.lr = lr
                on_device = not runtime.is_host(x)
                deferred = defer and on_device              # this step's loss stays on the device
                try:
                    loss, logits = train_step(self.model, self.criterion, self.optimizer, x, y,
                                              self.clip_grad_norm, self.parallel, self._pending_signal(),
                                              self.scaler, defer=deferred)
                except NonFiniteLoss as exc:
                    raise NonFiniteLoss(f"{exc} at epoch {epoch + 1}, step {self.step + 1}; training stopped "
                                        f"(checkpoints in {self.checkpoint_dir} left as they were)") from None
                self.step += 1
                p = self.partial
                if self.parallel is None:
                    seen, stop = len(y), self.stop.requested
                    if not on_device:
                        correct = correct_count(logits, y)
                    else:                                   # counted on the device, read when shown or saved
                        self._count_on_device(loss if deferred else None, logits, y, seen)
                        correct = 0
                else:                                       # the global batch's, agreed in the step
                    correct, seen = self.parallel.correct, self.parallel.seen
                    stop = self._agreed_stop(self.parallel.stop_signum)
                if not deferred:
                    p["loss_sum"] += loss * seen
                p["correct"] += correct
                p["seen"] += seen
                for h in self.hooks:
                    h.step_end(self, loss, seen)
                if deferred and (self.step % self.check_every == 0 or self.step == steps):
                    self.read_partial()                     # a non-finite loss stops the run here
                if stop:
                    self.partial["seconds"] += time.perf_counter() - self._t0
                    self._interrupt()
        finally:
            for h in self.hooks:
                h.train_end(self)
        return lr

    def _end_epoch(self, lr: float) -> None:
        """Evaluate, count the epoch, and run the end-of-epoch hooks."""
        t1 = time.perf_counter()
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext(), \
                nn.autocast(self.scaler is not None):
            if self.ema is not None:
                self.ema.update_bn()                # the average's own BN statistics (given bn_batches)
            ev = evaluate(self.model, self.test_loader, self.criterion, self.num_classes,
                          progress=not self.quiet and self.comm.is_main, desc="test",
                          stop=self.stop if self.comm.size == 1 else None, comm=self.comm)
        if ev is None or (self.parallel is not None and self._stop_requested()):
            self._interrupt()
        p = self.read_partial()
        row = {"epoch": self.epoch + 1, "train_loss": p["loss_sum"] / max(p["seen"], 1),
               "train_acc": p["correct"] / max(p["seen"], 1), "test_loss": ev["loss"],
               "test_acc": ev["accuracy"], "lr": lr, "dropout": self.dropout_p,
               "seconds": p["seconds"] + time.perf_counter() - t1, "best": ev["accuracy"] > self.best_accuracy}
        self.history.append(row)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_rng_state = None
        if row["best"]:
            self.best_accuracy = ev["accuracy"]
        if hasattr(self.lr_schedule, "step"):             # ReduceLROnPlateau follows the test loss
            self.lr_schedule.step(row["test_loss"])
        for h in self.hooks:
            h.epoch_end(self, row)
        if self._stop_requested():
            raise TrainingInterrupted(self.last_path, self.epoch, 0)
