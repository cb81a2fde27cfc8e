"""Helpers shared by the entry points: argument types, one-line errors, backend selection."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .. import backend
from ..data import DatasetError
from ..training import CheckpointError, NonFiniteLoss, TrainingInterrupted


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s}")
    return v


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


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=backend.CHOICES, default=os.environ.get(backend.ENV_VAR) or "auto",
                   help="array backend: numpy (CPU), cupy (NVIDIA GPU) or auto (cupy if a GPU is visible) "
                        f"[default: ${backend.ENV_VAR} or auto]")


def select_backend(choice: str, quiet: bool = False) -> None:
    backend.set_backend(choice)
    if not quiet:
        print(backend.describe(), flush=True)


def fail(message: str, code: int = 1) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run(main: Callable[[], int | None]) -> int:
    """Run an entry point: known failures become one line on stderr and a non-zero exit, no traceback."""
    try:
        return int(main() or 0)
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("\naborted: second Ctrl-C, nothing saved for the current epoch (existing checkpoints untouched)",
              file=sys.stderr, flush=True)
        return 130
    except (DatasetError, CheckpointError, NonFiniteLoss, backend.BackendError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
