"""The epoch's running training figures (loss sum, correct predictions, images seen, seconds) in one object
with one read method.

On a GPU every value read back to the host waits for the device, so a step's figures stay on the device
(0-d arrays, added up there) until ``read`` folds them in with one host read: the progress bar reads them
at most twice a second, the loop every ``Trainer.check_every`` steps and at the epoch's end, a checkpoint
when it is written. The loss of a deferred step (``train_step(defer=True)``) is checked there too: the first
step whose loss was not finite is remembered on the device, and ``read`` raises NonFiniteLoss naming it.
"""
from __future__ import annotations

import time
from typing import Callable

from ..backend import Array, get_array_module, is_device_array, is_host, to_numpy
from ..data.augment import MixedTargets
from .metrics import correct_count, correct_hits
from .step import NonFiniteLoss


def _fresh() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


class EpochMeter:
    """Running sums of one epoch's training steps: ``loss_sum`` (the loss times the batch's images),
    ``correct``, ``seen`` and ``seconds`` (of training steps; a run resumed inside an epoch continues the
    saved sums). ``where(step)`` completes the message of a non-finite loss found at ``step`` (the Trainer's
    names the epoch and where the checkpoints are)."""

    def __init__(self, where: Callable[[int], str] = lambda step: f"at step {step}") -> None:
        self.where = where
        self.reset()

    def reset(self, figures: dict | None = None) -> None:
        """Start an epoch's sums afresh, or from ``figures`` (a checkpoint's, for an epoch resumed part-way)."""
        self._figures = dict(figures or _fresh())
        # 0-d device arrays not yet read: "correct", "loss_sum" and "bad_step" (the first step whose loss was
        # not finite; 0: none).
        self._pending: dict[str, Array] = {}
        self._t0: float | None = None

    def start_clock(self) -> None:
        """The epoch's training steps start (or resume): their time counts from now."""
        self._t0 = time.perf_counter()

    def stop_clock(self) -> None:
        """The steps stopped: add their time to ``seconds`` (once, however often it is called)."""
        if self._t0 is not None:
            self._figures["seconds"] += time.perf_counter() - self._t0
            self._t0 = None

    def add(self, loss: float, correct: int, seen: int) -> None:
        """A step's figures counted on the host (in a data-parallel run: the global batch's, agreed by the
        ranks)."""
        f = self._figures
        f["loss_sum"] += loss * seen
        f["correct"] += correct
        f["seen"] += seen

    def count(self, loss: float | Array, logits: Array, y: Array | MixedTargets, step: int) -> None:
        """One process's training step number ``step`` of the epoch: its correct predictions are counted where
        ``logits`` are (on a GPU, on the device); ``loss`` is a float, or, from ``train_step(defer=True)``, a 0-d
        device array, which is summed and checked for finiteness on the device."""
        seen = len(y)
        if is_host(logits):
            self.add(loss, correct_count(logits, y), seen)
            return
        self._add_pending("correct", correct_hits(logits, y))
        if is_device_array(loss):
            xp = get_array_module(logits)
            finite = xp.isfinite(loss)
            self._add_pending("loss_sum", xp.where(finite, loss * seen, 0.0))
            here = xp.where(finite, 0, step)
            bad = self._pending.get("bad_step")
            self._pending["bad_step"] = here if bad is None else xp.where(bad > 0, bad, here)
        else:
            self._figures["loss_sum"] += loss * seen
        self._figures["seen"] += seen

    @property
    def unchecked(self) -> bool:
        """Whether losses summed on the device have not been checked for finiteness yet (no device read)."""
        return "bad_step" in self._pending

    def read(self) -> dict:
        """The figures so far (a new dict: ``loss_sum``, ``correct``, ``seen``, ``seconds``), with what the
        device counted since the last read folded in: one host read, where reading every step would stall the
        device every step. Raises NonFiniteLoss if a step's loss was not finite (that step's update was
        skipped on the device)."""
        if self._pending:
            keys = list(self._pending)
            xp = get_array_module(self._pending[keys[0]])
            vals = dict(zip(keys, to_numpy(xp.stack([self._pending[k].astype(xp.float64) for k in keys]))))
            self._pending = {}
            self._figures["correct"] += int(vals["correct"])
            self._figures["loss_sum"] += float(vals.get("loss_sum", 0.0))
            if vals.get("bad_step", 0) > 0:
                raise NonFiniteLoss(f"loss became non-finite (NaN or infinite) {self.where(int(vals['bad_step']))}")
        return dict(self._figures)

    def _add_pending(self, key: str, value: Array) -> None:
        self._pending[key] = value if key not in self._pending else self._pending[key] + value
