"""Ctrl-C during training: the first asks the loop to stop after the current step and save; the second
aborts at once."""
from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Iterator


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
