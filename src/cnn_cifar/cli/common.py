"""Helpers shared by the entry points: argument types, one-line errors, backend selection."""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Callable

from .. import backend, runtime
from ..data import DatasetError
from ..data.datasets import DatasetNotFound
from ..errors import SettingError
from ..interop.convert import ShortcutMismatch
from ..training import CheckpointError, NonFiniteLoss, TrainingInterrupted
from ..training.checkpoint import AmbiguousCheckpoint, ModelMismatch


def _number(cast: type, ok, what: str):
    """An argparse type: parse with ``cast`` and require ``ok(value)``, else say it must be ``what``."""
    article = "an" if what[0] in "aeiou" else "a"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {article} {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {article} {what}, got {text}")
        return value
    parse.__name__ = what.replace(" ", "_").replace("-", "_")
    return parse


_finite = math.isfinite
positive_int = _number(int, lambda v: v > 0, "positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "non-negative integer")
positive_float = _number(float, lambda v: _finite(v) and v > 0, "positive number")
nonneg_float = _number(float, lambda v: _finite(v) and v >= 0, "non-negative number")


def epoch_count(s: str) -> int | float:
    """A positive number of epochs: a whole number stays an int, a fraction (9.9) is a float."""
    v = positive_float(s)
    return int(v) if v.is_integer() else v


def probability(s: str) -> float:
    v = nonneg_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def unit_interval_open(s: str) -> float:
    """A factor in (0, 1]."""
    v = positive_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def open_unit_interval(s: str) -> float:
    """A fraction strictly between 0 and 1."""
    v = positive_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=backend.CHOICES, default=os.environ.get(backend.ENV_VAR) or "auto",
                   help="array backend: numpy (CPU), cupy (NVIDIA GPU) or auto (cupy if a GPU is visible) "
                        f"[default: ${backend.ENV_VAR} or auto]")


def select_backend(choice: str, quiet: bool = False) -> None:
    """Switch to the chosen backend and apply the runtime tuning a training or evaluation process wants."""
    backend.set_backend(choice)
    runtime.enable()
    if not quiet:
        print(backend.describe(), flush=True)


def flag(setting: str) -> str:
    """A run setting's command-line flag: ``cutout_p`` -> ``--cutout-p``."""
    return "--" + setting.replace("_", "-")


def message(exc: BaseException) -> str:
    """An error's message for the command line: a SettingError names its settings as flags, a missing dataset
    says which flags fetch or find it."""
    if isinstance(exc, SettingError):
        return exc.worded(flag)
    if isinstance(exc, DatasetNotFound):
        return (f"{exc.spec.name} not found: {exc.path} is missing (run without --no-download to fetch it, or "
                f"point --data at the folder holding {exc.spec.folder})")
    advice = {TrainingInterrupted: lambda: f"continue with --resume {exc.path}",
              ModelMismatch: lambda: f"use --model {exc.found}",
              AmbiguousCheckpoint: lambda: "choose one with --model",
              ShortcutMismatch: lambda: "give --shortcut pad"}
    for kind, say in advice.items():
        if isinstance(exc, kind):
            return f"{exc} ({say()})"
    return str(exc)


active_comm = None
"""The run's Communicator once a --distributed run has joined its ranks (None in one process)."""

class AgreedError(ValueError):
    """A bad setting that every rank of a --distributed run finds alike (the batch does not split over the
    ranks): reported once, by rank 0."""


# Failures every rank meets at the same point (agreed over ranks): only rank 0 reports them.
_COLLECTIVE = (TrainingInterrupted, NonFiniteLoss, AgreedError)


def _report(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and one-line message for a known failure; None for anything else."""
    if isinstance(exc, TrainingInterrupted):
        return 128 + int(getattr(exc, "signum", signal.SIGINT)), f"stopped: {message(exc)}"   # 130 Ctrl-C, 143 SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        what = str(exc) or "Ctrl-C"
        return (143 if what == "SIGTERM" else 130,
                f"\naborted: second {what}, nothing saved for the current epoch (existing checkpoints untouched)")
    if isinstance(exc, (DatasetError, CheckpointError, NonFiniteLoss, backend.BackendError, ValueError, OSError)):
        return 1, f"error: {message(exc)}"
    return None


def run(main: Callable[[], int | None]) -> int:
    """Run an entry point: known failures become one line on stderr and a non-zero exit, no traceback.

    In a --distributed run a failure of one rank ends every rank (MPI abort) with that rank's line, so no
    peer waits forever in a collective; the failures all ranks meet together end each rank normally, and
    only rank 0 reports them."""
    try:
        return int(main() or 0)
    except SystemExit:
        raise
    except BaseException as exc:
        comm = active_comm
        known = _report(exc)
        if comm is None or comm.size == 1:
            if known is None:
                raise
            print(known[1], file=sys.stderr, flush=True)
            return known[0]
        code, line = known or (1, f"error: {type(exc).__name__}: {exc}")
        if isinstance(exc, _COLLECTIVE):
            if comm.is_main:
                print(line, file=sys.stderr, flush=True)
            comm.barrier()          # no rank ends (and has the launcher end the job) before rank 0 has said why
            return code
        print(f"[rank {comm.rank}] {line.lstrip()}", file=sys.stderr, flush=True)
        comm.abort(code)
