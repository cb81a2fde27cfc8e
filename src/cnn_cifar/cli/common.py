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
from ..training import CheckpointError, NonFiniteLoss, TrainingInterrupted


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


def run(main: Callable[[], int | None]) -> int:
    """Run an entry point: known failures become one line on stderr and a non-zero exit, no traceback."""
    try:
        return int(main() or 0)
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr, flush=True)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))      # 130 for Ctrl-C, 143 for SIGTERM
    except KeyboardInterrupt as exc:
        what = str(exc) or "Ctrl-C"
        print(f"\naborted: second {what}, nothing saved for the current epoch (existing checkpoints untouched)",
              file=sys.stderr, flush=True)
        return 143 if what == "SIGTERM" else 130
    except (DatasetError, CheckpointError, NonFiniteLoss, backend.BackendError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
