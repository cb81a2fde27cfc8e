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
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step}; state saved to {path}")
        self.path = path
        self.signum = signal.SIGINT


class StopFlag:
    """Set by the signal handler; the loop checks it between steps so no update is cut in half."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT         # which signal asked (the exit status is 128 + its number)

    def set(self, signum: int = signal.SIGINT) -> None:
        self.requested = True
        self.signum = signum


NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@contextlib.contextmanager
def interrupt_guard(flag: StopFlag, quiet: bool = False) -> Iterator[StopFlag]:
    """Ctrl-C or SIGTERM (what Slurm, ``timeout`` and container runtimes send) asks the loop to stop after
    the current step and save; a second one aborts at once (KeyboardInterrupt naming the signal). ``quiet``
    (the ranks other than 0 of a distributed run) leaves the notice to others."""
    def handler(signum, _frame):
        if flag.requested:
            raise KeyboardInterrupt(NAMES.get(signum, "signal"))
        flag.set(signum)
        if quiet:
            return
        again = "press again" if signum == signal.SIGINT else "send it again"
        print(f"\n{NAMES.get(signum, 'signal')}: stopping after this step and saving ({again} to abort without "
              f"saving)", file=sys.stderr, flush=True)

    try:
        previous = {s: signal.signal(s, handler) for s in NAMES}
    except ValueError:       # not in the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    except TrainingInterrupted as exc:
        exc.signum = flag.signum
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
