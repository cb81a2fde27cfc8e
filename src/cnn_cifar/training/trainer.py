"""The training loop: epochs of SGD/Adam steps with per-step LR, per-epoch dropout, evaluation,
checkpoints, history and logs; exact resume (also from the middle of an epoch after Ctrl-C)."""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import backend, nn
from ..data import BatchLoader
from ..optim import DropoutSchedule, LRSchedule, Optimizer
from . import metrics
from .checkpoint import save_checkpoint
from .history import write_history


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stops and existing checkpoints are left alone."""


class TrainingInterrupted(Exception):
    """Ctrl-C: the state was saved to ``path`` and training stopped."""

    def __init__(self, path: Path, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step}; state saved to {path} "
                         f"(continue with --resume {path})")
        self.path = path


class StopFlag:
    """Set by the SIGINT handler; the loop checks it between steps so no update is cut in half."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True


@contextlib.contextmanager
def interrupt_guard(flag: StopFlag) -> Iterator[StopFlag]:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts at once."""
    def handler(signum, frame):  # noqa: ARG001
        if flag.requested:
            raise KeyboardInterrupt
        flag.set()
        print("\nCtrl-C: stopping after this step and saving (press again to abort without saving)",
              file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:       # not in the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def evaluate(model: nn.Module, loader: BatchLoader, criterion: nn.SoftmaxCrossEntropy, num_classes: int,
             ks: tuple[int, ...] = (1, 3, 5), progress: bool = False, desc: str = "eval",
             stop: StopFlag | None = None) -> dict | None:
    """Eval-mode pass over a loader (BN running stats, no dropout): loss, accuracy, top-k and the confusion
    matrix. Returns None if ``stop`` was set part-way."""
    from tqdm.auto import tqdm
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    top = {k: 0 for k in ks}
    preds, labels = [], []
    try:
        with nn.no_grad():
            for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
                logits = model(x)
                loss_sum += criterion(logits, y) * len(y)
                n += len(y)
                for k, c in metrics.topk_correct(logits, y, ks).items():
                    top[k] += c
                preds.append(backend.to_numpy(logits.argmax(axis=1)))
                labels.append(backend.to_numpy(y))
                if stop is not None and stop.requested:
                    return None
    finally:
        model.train(was_training)
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    return {"loss": loss_sum / max(n, 1), "accuracy": float((y_true == y_pred).mean()) if n else 0.0,
            "topk": {k: c / max(n, 1) for k, c in top.items()}, "n": n,
            "confusion_matrix": metrics.confusion_matrix(y_true, y_pred, num_classes),
            "y_true": y_true, "y_pred": y_pred}


class Trainer:
    """Owns the loop state (epoch, step, RNG streams, history, best accuracy) and its checkpoints."""

    def __init__(self, model: nn.Module, model_name: str, optimizer: Optimizer, lr_schedule: LRSchedule,
                 dropout_schedule: DropoutSchedule, criterion: nn.SoftmaxCrossEntropy, train_loader: BatchLoader,
                 test_loader: BatchLoader, num_classes: int, checkpoint_dir: str | Path,
                 log_path: str | Path | None = None, run_info: dict | None = None, quiet: bool = False,
                 on_epoch_end: list[Callable[["Trainer"], None]] | None = None, stop: StopFlag | None = None):
        self.model, self.model_name, self.optimizer = model, model_name, optimizer
        self.lr_schedule, self.dropout_schedule, self.criterion = lr_schedule, dropout_schedule, criterion
        self.train_loader, self.test_loader, self.num_classes = train_loader, test_loader, num_classes
        self.checkpoint_dir = Path(checkpoint_dir)
        self.log_path = Path(log_path) if log_path else None
        self.run_info = run_info or {}
        self.quiet = quiet
        self.on_epoch_end = on_epoch_end or []
        self.stop = stop or StopFlag()
        self.epoch = 0                 # epochs completed
        self.step = 0                  # steps completed inside the current epoch
        self.history: list[dict] = []
        self.best_accuracy = -1.0
        self.dropout_p = dropout_schedule.rate
        self.epoch_rng_state: dict | None = None
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}

    # ----------------------------------------------------------------- checkpoints
    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_last.pkl"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / f"{self.model_name}_best.pkl"

    def payload(self) -> dict:
        return {
            "model": self.model_name, "model_config": dict(getattr(self.model, "config", {})),
            "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": {"lr": self.lr_schedule.to_dict(), "dropout": self.dropout_schedule.to_dict(),
                         "dropout_p": self.dropout_p},
            "epoch": self.epoch, "step": self.step, "partial": dict(self.partial),
            "best_accuracy": self.best_accuracy, "history": copy.deepcopy(self.history),
            "rng": {"data": self.train_loader.rng.bit_generator.state, "epoch_start": self.epoch_rng_state,
                    "dropout": nn.random.get_state()},
            **self.run_info,
        }

    def restore(self, ck: dict) -> None:
        """Continue from a checkpoint's state (model, optimizer, RNG streams, position, history)."""
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.epoch, self.step = int(ck["epoch"]), int(ck.get("step", 0))
        self.history = list(ck.get("history", []))
        self.best_accuracy = float(ck.get("best_accuracy", -1.0))
        self.dropout_p = float(ck.get("schedule", {}).get("dropout_p", self.dropout_schedule.rate))
        self.partial = dict(ck.get("partial") or self.partial)
        rng = ck.get("rng", {})
        if rng.get("data") is not None:
            self.train_loader.rng.bit_generator.state = rng["data"]
        self.epoch_rng_state = rng.get("epoch_start")
        nn.random.set_state(rng.get("dropout"))

    # ----------------------------------------------------------------- logging
    def _say(self, line: str) -> None:
        print(line, flush=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    def _interrupt(self) -> None:
        save_checkpoint(self.last_path, self.payload())
        raise TrainingInterrupted(self.last_path, self.epoch, self.step)

    # ----------------------------------------------------------------- loop
    def fit(self, epochs: int) -> list[dict]:
        """Train until ``epochs`` epochs are complete; returns the history."""
        # Overflow shows up as a non-finite loss, which is reported by the loop itself.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fit(epochs)

    def _fit(self, epochs: int) -> list[dict]:
        from tqdm.auto import tqdm
        steps = len(self.train_loader)
        rng = self.train_loader.rng
        while self.epoch < epochs:
            epoch = self.epoch
            if self.step == 0:
                prev = self.history[-1] if self.history else {}
                self.dropout_p = self.dropout_schedule.next_rate(epoch, self.dropout_p, prev.get("train_acc"),
                                                                 prev.get("test_acc"))
                self.epoch_rng_state = copy.deepcopy(rng.bit_generator.state)
                self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            else:                      # resuming inside an epoch: replay the data stream to this step
                rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
            self.model.set_dropout(self.dropout_p)
            self.model.train()
            t0 = time.perf_counter()
            lr = self.optimizer.lr
            if self.step < steps:
                batches = iter(self.train_loader)
                for _ in range(self.step):
                    next(batches)
                bar = tqdm(total=steps, initial=self.step, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                           leave=False, disable=self.quiet, dynamic_ncols=True)
                tb, seen0 = time.perf_counter(), self.partial["seen"]
                for x, y in batches:
                    lr = self.lr_schedule(epoch + (self.step + 1) / steps)
                    self.optimizer.lr = lr
                    self.model.zero_grad()
                    logits = self.model(x)
                    loss = self.criterion(logits, y)
                    if not math.isfinite(loss):
                        bar.close()
                        raise NonFiniteLoss(f"loss became {loss} at epoch {epoch + 1}, step {self.step + 1}; "
                                            f"training stopped (checkpoints in {self.checkpoint_dir} left as they were)")
                    self.model.backward(self.criterion.backward())
                    self.optimizer.step()
                    self.step += 1
                    p = self.partial
                    p["loss_sum"] += loss * len(y)
                    p["correct"] += int(backend.to_numpy((logits.argmax(axis=1) == y).sum()))
                    p["seen"] += len(y)
                    bar.update(1)
                    if not self.quiet:
                        bar.set_postfix(loss=f"{p['loss_sum'] / p['seen']:.4f}",
                                        acc=f"{100 * p['correct'] / p['seen']:.2f}%",
                                        img_s=f"{(p['seen'] - seen0) / max(time.perf_counter() - tb, 1e-9):.0f}",
                                        refresh=False)
                    if self.stop.requested:
                        self.partial["seconds"] += time.perf_counter() - t0
                        bar.close()
                        self._interrupt()
                bar.close()
            self.partial["seconds"] += time.perf_counter() - t0
            t1 = time.perf_counter()
            ev = evaluate(self.model, self.test_loader, self.criterion, self.num_classes,
                          progress=not self.quiet, desc="test", stop=self.stop)
            if ev is None:
                self._interrupt()
            p = self.partial
            seconds = p["seconds"] + time.perf_counter() - t1
            row = {"epoch": epoch + 1, "train_loss": p["loss_sum"] / max(p["seen"], 1),
                   "train_acc": p["correct"] / max(p["seen"], 1), "test_loss": ev["loss"],
                   "test_acc": ev["accuracy"], "lr": lr, "dropout": self.dropout_p, "seconds": seconds,
                   "best": ev["accuracy"] > self.best_accuracy}
            self.history.append(row)
            self.epoch, self.step = epoch + 1, 0
            self.epoch_rng_state = None
            if row["best"]:
                self.best_accuracy = ev["accuracy"]
            payload = self.payload()
            save_checkpoint(self.last_path, payload)
            if row["best"]:
                save_checkpoint(self.best_path, payload)
            write_history(self.checkpoint_dir, self.model_name, self.history)
            self._say(format_row(row, epochs))
            for cb in self.on_epoch_end:
                cb(self)
            if self.stop.requested:
                raise TrainingInterrupted(self.last_path, self.epoch, 0)
        return self.history


def format_row(row: dict, epochs: int) -> str:
    """The one summary line per epoch."""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%"
            f"  test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:6.2f}%  lr {row['lr']:.6f}"
            f"  dropout {row['dropout']:.3f}  {row['seconds']:6.1f}s{'  *best*' if row['best'] else ''}")
