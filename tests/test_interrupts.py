"""Interrupts and failures mid-write: atomic_write, the SIGINT guard, Ctrl-C during evaluation, a NaN loss
after a good epoch, and how the CLI wrapper turns each failure into an exit code and one line on stderr.

Everything runs in-process (no training subprocesses): the trainer is the small one from test_training.py.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend
from cnn_cifar.cli.common import run
from cnn_cifar.data import DatasetError, load_dataset
from cnn_cifar.training import (
    CheckpointError,
    NonFiniteLoss,
    StopFlag,
    TrainingInterrupted,
    interrupt_guard,
    load_checkpoint,
)
from cnn_cifar.training.atomic import atomic_write

from conftest import digests
from test_training import StopAfter, make_trainer

STEPS_PER_EPOCH = 7      # 500 training images, batch 64, drop_last (make_trainer's loader)
EVAL_BATCHES = 2         # 200 test images, batch 100


# ------------------------------------------------------------------ (a) atomic_write
class WriteFailed(Exception):
    """An error of our own, so the test can tell it was re-raised as itself and not wrapped or replaced."""


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize("exc_type", [WriteFailed, KeyboardInterrupt])
def test_atomic_write_failure_keeps_old_file_and_reraises(exc_type, tmp_path):
    """An exception raised inside ``write`` after some bytes were written (an error of ours, or Ctrl-C)
    propagates as that very type and object, the old file is byte-identical, and the temp file is gone."""
    path = tmp_path / "state.bin"
    old = b"old content \x00\xff" * 100
    path.write_bytes(old)
    raised = exc_type("boom")

    def write(f):
        f.write(b"new partial content" * 1000)
        f.flush()
        raise raised

    with pytest.raises(exc_type) as info:
        atomic_write(path, write)
    assert info.value is raised
    assert path.read_bytes() == old
    assert _leftovers(tmp_path, "state.bin") == []


@pytest.mark.parametrize("exc_type", [WriteFailed, KeyboardInterrupt])
def test_atomic_write_failure_without_old_file_creates_nothing(exc_type, tmp_path):
    """With no file there before, a failed write leaves no file (neither the target nor a temp file)."""
    def write(f):
        f.write(b"x" * 10)
        raise exc_type("boom")

    with pytest.raises(exc_type):
        atomic_write(tmp_path / "sub" / "new.bin", write)
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_write_success_replaces_and_uses_umask_permissions(tmp_path):
    """Control: a successful write replaces the content, leaves no temp file, and the file gets the usual
    permissions (0666 minus the umask), not mkstemp's 0600."""
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    mask = os.umask(0o022)
    try:
        atomic_write(path, lambda f: f.write(b"new"))
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"new"
    assert _leftovers(tmp_path, "state.bin") == []
    assert path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ (b) interrupt_guard
NOTICE = "Ctrl-C: stopping after this step and saving (press again to abort without saving)"


@pytest.fixture
def sentinel_sigint():
    """Install a recording SIGINT handler for the test (so a guard that failed to install its own cannot
    abort the pytest run), and put the original one back afterwards."""
    calls: list[int] = []

    def sentinel(signum, frame):  # noqa: ARG001
        calls.append(signum)

    original = signal.signal(signal.SIGINT, sentinel)
    try:
        yield sentinel, calls
    finally:
        signal.signal(signal.SIGINT, original)


def test_first_sigint_sets_flag_and_prints_notice(sentinel_sigint, capsys):
    """The first SIGINT inside the guard only sets the flag and prints the notice on stderr (nothing on
    stdout); the previous handler is not called and nothing is raised."""
    sentinel, calls = sentinel_sigint
    flag = StopFlag()
    with interrupt_guard(flag) as got:
        assert got is flag and flag.requested is False
        signal.raise_signal(signal.SIGINT)
        assert flag.requested is True
    out, err = capsys.readouterr()
    assert err == "\n" + NOTICE + "\n"
    assert out == ""
    assert calls == []


def test_second_sigint_raises_keyboard_interrupt_and_restores_handler(sentinel_sigint, capsys):
    """A second SIGINT raises KeyboardInterrupt out of the block; the notice was printed once; on the way out
    the previous handler is back (checked both by getsignal and by sending one more SIGINT)."""
    sentinel, calls = sentinel_sigint
    flag = StopFlag()
    with pytest.raises(KeyboardInterrupt):
        with interrupt_guard(flag):
            signal.raise_signal(signal.SIGINT)
            assert flag.requested is True
            signal.raise_signal(signal.SIGINT)
            pytest.fail("the second SIGINT did not raise")   # pragma: no cover
    assert capsys.readouterr().err.count("Ctrl-C: stopping") == 1
    assert signal.getsignal(signal.SIGINT) is sentinel
    signal.raise_signal(signal.SIGINT)
    assert calls == [signal.SIGINT]


def test_guard_restores_previous_handler_after_normal_exit_and_error(sentinel_sigint):
    """The previous SIGINT handler is restored after a block that ends normally and after one that raises."""
    sentinel, _ = sentinel_sigint
    with interrupt_guard(StopFlag()):
        assert signal.getsignal(signal.SIGINT) is not sentinel
    assert signal.getsignal(signal.SIGINT) is sentinel
    with pytest.raises(ZeroDivisionError):
        with interrupt_guard(StopFlag()):
            1 / 0
    assert signal.getsignal(signal.SIGINT) is sentinel


def test_guard_outside_main_thread_leaves_signals_alone(sentinel_sigint):
    """In a worker thread (where signal.signal is not allowed) the guard yields the flag and does nothing."""
    sentinel, _ = sentinel_sigint
    seen: dict = {}

    def worker():
        flag = StopFlag()
        with interrupt_guard(flag) as got:
            seen["flag"] = got is flag
            seen["handler"] = signal.getsignal(signal.SIGINT)

    t = threading.Thread(target=worker)
    t.start()
    t.join(timeout=60)
    assert seen == {"flag": True, "handler": sentinel}


# ------------------------------------------------------------------ (c) Ctrl-C during evaluation
@pytest.fixture(scope="module")
def ds(cifar_root):
    return load_dataset("cifar10", cifar_root, download=False)


@pytest.fixture(scope="module")
def straight(ds, tmp_path_factory):
    """A 2-epoch run with no interruption: its final weights and history, to compare resumed runs with."""
    backend.set_backend("numpy")
    tr = make_trainer(ds, tmp_path_factory.mktemp("straight"))
    tr.fit(2)
    return {k: v.copy() for k, v in tr.model.state_dict().items()}, [dict(r) for r in tr.history]


def _stop_in_eval(epoch_index: int) -> StopAfter:
    """A stop flag that turns on at the first evaluation-batch check of epoch ``epoch_index`` (0-based):
    each completed epoch makes STEPS_PER_EPOCH step checks, EVAL_BATCHES eval checks and 1 end check."""
    return StopAfter(epoch_index * (STEPS_PER_EPOCH + EVAL_BATCHES + 1) + STEPS_PER_EPOCH)


@pytest.mark.parametrize("epoch_index", [0, 1])
def test_ctrl_c_during_evaluation_saves_trained_but_incomplete_epoch(epoch_index, ds, tmp_path):
    """Stop requested while evaluate() runs (after every train step of the epoch): TrainingInterrupted says
    'epoch N, step 7'; cnn_last.pkl has the epoch's training done (step == steps per epoch, all its images
    counted in 'partial') but the epoch not counted (epoch field and history unchanged); no epoch row or
    best checkpoint is written for it."""
    tr = make_trainer(ds, tmp_path, stop=_stop_in_eval(epoch_index))
    with pytest.raises(TrainingInterrupted,
                       match=rf"^interrupted at epoch {epoch_index + 1}, step {STEPS_PER_EPOCH}; state saved to "
                             rf".*cnn_last\.pkl"):
        tr.fit(2)
    ck = load_checkpoint(tmp_path / "cnn_last.pkl", "cnn")
    assert (ck.epoch, ck.step) == (epoch_index, STEPS_PER_EPOCH)
    assert ck.partial["seen"] == STEPS_PER_EPOCH * 64
    assert [r["epoch"] for r in ck.history] == list(range(1, epoch_index + 1))
    assert ck.rng["epoch_start"] is not None
    if epoch_index == 0:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn_last.pkl"]
    else:
        history_csv = (tmp_path / "cnn_history.csv").read_text().splitlines()
        assert len(history_csv) == 1 + epoch_index          # header + completed epochs only


def _resume_after_eval_interrupt(ds, tmp_path, epoch_index):
    tr = make_trainer(ds, tmp_path, stop=_stop_in_eval(epoch_index))
    with pytest.raises(TrainingInterrupted):
        tr.fit(2)
    resumed = make_trainer(ds, tmp_path, seed=9)      # another seed: everything must come from the file
    resumed.restore(load_checkpoint(tmp_path / "cnn_last.pkl", "cnn"))
    resumed.fit(2)
    return resumed


def _assert_same_run(straight, resumed):
    weights, history = straight
    got = resumed.model.state_dict()
    assert got.keys() == weights.keys()
    differing = [k for k in weights if not np.array_equal(weights[k], got[k])]
    assert differing == []
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(history)


def test_resume_after_ctrl_c_in_last_epochs_evaluation_is_exact(ds, straight, tmp_path):
    """Interrupted while evaluating the final epoch, then resumed: the evaluation is redone and the weights
    and history (every field but the timing) equal a straight run's bit for bit."""
    _assert_same_run(straight, _resume_after_eval_interrupt(ds, tmp_path, 1))


def test_resume_after_ctrl_c_in_evaluation_then_more_epochs_is_exact(ds, straight, tmp_path):
    """Interrupted while evaluating epoch 1 of 2, then resumed to the end: must equal a straight run bit for
    bit (weights and history), like a resume from mid-epoch or from an epoch boundary does."""
    _assert_same_run(straight, _resume_after_eval_interrupt(ds, tmp_path, 0))


# ------------------------------------------------------------------ (d) NaN loss after a good epoch
def test_nan_loss_leaves_every_output_file_byte_identical(ds, tmp_path):
    """After one good epoch, a run whose loss goes non-finite raises NonFiniteLoss and leaves cnn_best.pkl,
    cnn_last.pkl, cnn_history.csv and cnn_history.jsonl byte-identical, with no other file appearing."""
    good = make_trainer(ds, tmp_path)
    good.fit(1)
    names = ["cnn_best.pkl", "cnn_history.csv", "cnn_history.jsonl", "cnn_last.pkl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    before = digests(tmp_path, names)
    bad = make_trainer(ds, tmp_path, epochs=2, lr=1e30)
    bad.restore(load_checkpoint(tmp_path / "cnn_last.pkl"))
    bad.optimizer.lr = 1e30
    with pytest.raises(NonFiniteLoss, match=r"^loss became (nan|inf|-inf) at epoch 2, step \d+; training stopped"):
        bad.fit(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert digests(tmp_path, names) == before


# ------------------------------------------------------------------ (e) the CLI wrapper
def _raiser(exc: BaseException):
    def main():
        raise exc
    return main


def test_run_second_ctrl_c_is_130_and_one_line(capsys):
    """KeyboardInterrupt out of main (a second Ctrl-C) -> exit code 130 and exactly one 'aborted:' line on
    stderr (after a newline that ends the ^C line), no traceback, nothing on stdout."""
    assert run(_raiser(KeyboardInterrupt())) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("\naborted: second Ctrl-C, nothing saved for the current epoch (existing checkpoints "
                   "untouched)\n")


def test_run_training_interrupted_is_130_with_resume_hint(capsys, tmp_path):
    """TrainingInterrupted -> 130 and 'stopped: interrupted at epoch E, step S; state saved to P (continue
    with --resume P)' on one stderr line."""
    path = tmp_path / "cnn_last.pkl"
    assert run(_raiser(TrainingInterrupted(path, 2, 5))) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"stopped: interrupted at epoch 3, step 5; state saved to {path} (continue with --resume {path})\n"


@pytest.mark.parametrize("exc", [DatasetError("cifar10 not found: x is missing"),
                                 CheckpointError("checkpoint not found: y.pkl"),
                                 ValueError("batch_size must be positive, got 0"),
                                 NonFiniteLoss("loss became nan at epoch 2, step 1"),
                                 backend.BackendError("backend 'cupy' requested but cannot run: no GPU"),
                                 FileNotFoundError(2, "No such file or directory", "z.json")],
                         ids=lambda e: type(e).__name__)
def test_run_known_errors_are_1_and_one_line(exc, capsys):
    """Known failures -> exit code 1 and 'error: <message>' as the only stderr line."""
    assert run(_raiser(exc)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {exc}\n"


def test_run_passes_exit_codes_through_and_lets_bugs_propagate(capsys):
    """main returning None -> 0, an int -> that int; an unexpected exception (a bug) is not swallowed."""
    assert run(lambda: None) == 0
    assert run(lambda: 3) == 3

    class Bug(Exception):
        pass

    with pytest.raises(Bug):
        run(_raiser(Bug("unexpected")))
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ SIGTERM: what batch schedulers send
@pytest.fixture
def sentinel_sigterm():
    """A recording SIGTERM handler for the test (a guard that failed would otherwise kill pytest)."""
    calls: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, original)


def test_sigterm_is_handled_like_ctrl_c(sentinel_sigterm, capsys):
    """The first SIGTERM sets the flag (remembering the signal) and says so; a second one aborts with a
    KeyboardInterrupt naming SIGTERM; the previous handler is back afterwards."""
    flag = StopFlag()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with interrupt_guard(flag):
            signal.raise_signal(signal.SIGTERM)
            assert flag.requested and flag.signum == signal.SIGTERM
            signal.raise_signal(signal.SIGTERM)
    assert capsys.readouterr().err == ("\nSIGTERM: stopping after this step and saving (send it again to abort "
                                       "without saving)\n")
    signal.raise_signal(signal.SIGTERM)
    assert sentinel_sigterm == [signal.SIGTERM]


class _TermAfter(StopFlag):
    """Sends a real SIGTERM to this process at the n-th check of the flag (mid-epoch, between steps)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self._requested = n, False

    @property
    def requested(self) -> bool:
        self.n -= 1
        if self.n == 0:
            signal.raise_signal(signal.SIGTERM)
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value


def test_sigterm_mid_epoch_saves_exits_143_and_resumes_exactly(ds, straight, tmp_path, sentinel_sigterm, capsys):
    flag = _TermAfter(STEPS_PER_EPOCH + EVAL_BATCHES + 1 + 2)     # epoch 2, at the check after its 2nd step
    tr = make_trainer(ds, tmp_path, stop=flag)
    code = run(lambda: _fit_guarded(tr, flag))
    assert code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stopped: interrupted at epoch 2, step ") and "--resume" in err[-1]
    ck = load_checkpoint(tmp_path / "cnn_last.pkl", "cnn")
    assert (ck.epoch, ck.step) == (1, 2)
    resumed = make_trainer(ds, tmp_path, seed=7)
    resumed.restore(ck)
    resumed.fit(2)
    _assert_same_run(straight, resumed)


def _fit_guarded(tr, flag):
    with interrupt_guard(flag):
        tr.fit(2)
