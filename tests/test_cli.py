"""The entry points. Error paths run in-process through ``main(argv)`` (fast, same code as the scripts);
training and evaluation as a user runs them are subprocesses started by conftest's helpers (``slow``)."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.cli import test as test_cli
from cnn_cifar.cli import train as train_cli
from cnn_cifar.training import load_checkpoint

from conftest import digests, one_line_error, popen_cli, run_cli, train_args

WAIT = 180.0      # seconds a signal test waits for a line before it gives up (kills the child and fails)


def epoch_lines(log: Path) -> int:
    """The epoch lines in a run's log (each run also writes its settings there before its first one)."""
    return sum(line.startswith("epoch ") for line in log.read_text().splitlines())


def train(tmp_path: Path, cifar_root: Path, *extra: str, ckdir: str = "ck") -> subprocess.CompletedProcess:
    """train_cli.py as a subprocess (slow tests only)."""
    return run_cli("train", "--model", "cnn", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", ckdir,
                   "--log-dir", "log", "--quiet", *extra, cwd=tmp_path)


@pytest.mark.parametrize("flags,pattern", [
    (["--epochs", "0"], r"argument --epochs: must be a positive number, got 0"),
    (["--batch-size", "-4"], r"argument --batch-size: must be a positive integer, got -4"),
    (["--lr", "0"], r"argument --lr: must be a positive number, got 0"),
    (["--lr", "nan"], r"argument --lr: must be a positive number"),
    (["--model", "vgg"], r"argument --model: invalid choice: 'vgg'"),
    (["--dropout-rate", "1.5"], r"argument --dropout-rate: must be in \[0, 1\)"),
    (["--min-dropout", "0.5", "--max-dropout", "0.3"], r"--min-dropout 0.5 is above --max-dropout 0.3"),
    (["--min-lr", "0.05"], r"--min-lr 0.05 is above --lr 0.02"),       # cnn's default lr is 0.02
])
def test_bad_flags_are_argparse_errors(inproc, cifar_root, flags, pattern):
    p = inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1"), *flags)
    one_line_error(p, 2, pattern)
    assert not Path("ck").exists()                   # refused before anything was written


def test_missing_data_is_one_line(inproc, tmp_path):
    p = inproc(train_cli.main, "--model", "cnn", "--data", str(tmp_path / "nowhere"), "--no-download", "--epochs", "1")
    one_line_error(p, 1, r"error: cifar10 not found: .*data_batch_1 is missing \(run without --no-download to "
                         r"fetch it, or point --data at the folder holding cifar-10-batches-py\)$")


def test_cupy_without_a_gpu_is_one_line(inproc, cifar_root, monkeypatch):
    from cnn_cifar import backend
    monkeypatch.setattr(backend, "_probe_cupy",                     # a machine where CuPy cannot run
                        lambda: (None, "CuPy is not importable (ModuleNotFoundError: No module named 'cupy')"))
    p = inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1", "--backend", "cupy"))
    one_line_error(p, 1, r"error: backend 'cupy' requested but cannot run")


def test_truncated_batch_is_one_line(inproc, tmp_path, cifar_root):
    import shutil
    shutil.copytree(cifar_root, tmp_path / "d")
    f = tmp_path / "d" / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:1000])
    p = inproc(train_cli.main, "--data", str(tmp_path / "d"), "--no-download", "--epochs", "1")
    one_line_error(p, 1, r"error: corrupt or truncated dataset file .*data_batch_2")


def test_test_cli_refusals(inproc, tmp_path, cifar_root):
    from cnn_cifar.training import save_checkpoint
    save_checkpoint(tmp_path / "r.pkl", {"model": "resnet20", "state_dict": {}, "epoch": 1})
    p = inproc(test_cli.main, "--model", "cnn", "--resume", "r.pkl", "--data", str(cifar_root))
    one_line_error(p, 1, r"holds a 'resnet20' model, not 'cnn'")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    p = inproc(test_cli.main, "--model", "cnn", "--resume", "evil.pkl", "--data", str(cifar_root))
    one_line_error(p, 1, r"refusing to load evil.pkl")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"a": 1}))
    one_line_error(inproc(test_cli.main, "--resume", "x.pkl"), 1, "is not a cnn-cifar-10 checkpoint")
    save_checkpoint(tmp_path / "w.pkl", {"model": "cnn", "state_dict": {"conv1.weight": np.zeros(3)}, "epoch": 1,
                                         "model_config": {"num_classes": 10}})
    p = inproc(test_cli.main, "--resume", "w.pkl", "--data", str(cifar_root), "--no-download", "--quiet")
    one_line_error(p, 1, r"w.pkl does not fit model 'cnn': .*missing keys")
    p = inproc(train_cli.main, *train_args(cifar_root, "--resume", "r.pkl", "--epochs", "2"))
    one_line_error(p, 1, r"holds a 'resnet20' model, not 'cnn'")
    assert not (tmp_path / "ck").exists()


def test_nan_loss_via_cli_keeps_checkpoints(inproc, tmp_path, cifar_root):
    assert inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1")).returncode == 0
    ck, log = tmp_path / "ck", tmp_path / "log" / "cnn.log"
    names = ("cnn_best.pkl", "cnn_last.pkl", "cnn_history.csv", "cnn_history.jsonl")
    before = digests(ck, names)
    log_before = log.read_bytes()
    p = inproc(train_cli.main, *train_args(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "2", "--lr", "1e30",
                                           "--warmup-epochs", "0"))
    one_line_error(p, 1, r"error: loss became (nan|inf) at epoch 2, step \d+; training stopped")
    assert sorted(f.name for f in ck.iterdir()) == sorted(names)        # no temp file, nothing new
    assert digests(ck, names) == before, "a file changed after the NaN stop"
    assert log.read_bytes() == log_before
    assert load_checkpoint(ck / "cnn_last.pkl", "cnn").epoch == 1


def test_a_resumed_run_writes_where_it_was_resumed_from(inproc, tmp_path, cifar_root):
    """--resume runs/a/cnn_last.pkl continues in runs/a and the run's log, not in ./checkpoint (which may hold
    another run's files); --checkpoint-dir still sends it elsewhere."""
    base = ["--model", "cnn", "--data", str(cifar_root), "--no-download", "--quiet", "--limit-train", "64",
            "--limit-test", "32", "--batch-size", "32", "--no-prefetch"]
    assert inproc(train_cli.main, *base, "--epochs", "1", "--checkpoint-dir", "runs/a",
                  "--log-dir", "runs/a/log").returncode == 0
    p = inproc(train_cli.main, *base, "--resume", "runs/a/cnn_last.pkl", "--epochs", "2")
    assert p.returncode == 0, p.stderr
    assert "resumed from runs/a/cnn_last.pkl: 1 epoch(s) done; checkpoints go to runs/a" in p.stdout
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "log").exists()
    assert load_checkpoint(tmp_path / "runs/a/cnn_last.pkl").epoch == 2
    assert epoch_lines(tmp_path / "runs/a/log/cnn.log") == 2
    p = inproc(train_cli.main, *base, "--resume", "runs/a/cnn_last.pkl", "--epochs", "3", "--checkpoint-dir", "b")
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(tmp_path / "b/cnn_last.pkl").epoch == 3
    assert load_checkpoint(tmp_path / "runs/a/cnn_last.pkl").epoch == 2


def test_help_and_an_argparse_error_through_the_script(tmp_path):
    """The one cheap subprocess: the real entry script starts, lists its groups and refuses a bad flag."""
    p = run_cli("train", "--help", cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    for group in ("optimizer", "learning-rate scheduling", "dynamic dropout", "data and augmentation",
                  "checkpoints and output", "advanced"):
        assert group in p.stdout
    one_line_error(run_cli("train", "--epochs", "0", cwd=tmp_path, timeout=120), 2,
                   r"argument --epochs: must be a positive number, got 0")


# ------------------------------------------------------------------ subprocesses: as a user runs them
@pytest.mark.slow
def test_train_resume_and_test_end_to_end(tmp_path, cifar_root):
    p = train(tmp_path, cifar_root, "--epochs", "2")
    assert p.returncode == 0, p.stderr
    ck = tmp_path / "ck"
    assert {"cnn_best.pkl", "cnn_last.pkl", "cnn_history.csv", "cnn_history.jsonl"} <= {f.name for f in ck.iterdir()}
    assert epoch_lines(tmp_path / "log" / "cnn.log") == 2
    p = train(tmp_path, cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "3")
    assert p.returncode == 0, p.stderr
    assert "resumed from ck/cnn_last.pkl: 2 epoch(s) done" in p.stdout
    rows = [json.loads(line) for line in (ck / "cnn_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = max(rows, key=lambda r: r["test_acc"])
    t = run_cli("test", "--model", "cnn", "--resume", "ck/cnn_best.pkl", "--data", str(cifar_root), "--no-download",
                "--quiet", "--json", "res.json", cwd=tmp_path)
    assert t.returncode == 0, t.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["accuracy"] == best["test_acc"]              # same number the training loop reported
    assert f"accuracy: {100 * best['test_acc']:.2f}%" in t.stdout
    for word in ("top-3", "precision", "macro avg", "confusion matrix", "airplane"):
        assert word in t.stdout
    assert np.array(res["confusion_matrix"]).sum() == 200 and len(res["per_class"]) == 10


@pytest.mark.slow
def test_cli_resume_is_bitwise_identical_to_a_straight_run(tmp_path, cifar_root):
    sched = ["--lr-schedule", "step", "--lr-decay-steps", "1", "--warmup-epochs", "0", "--dropout-schedule", "none",
             "--cutout", "8"]
    assert train(tmp_path, cifar_root, "--epochs", "4", *sched, ckdir="straight").returncode == 0
    assert train(tmp_path, cifar_root, "--epochs", "2", *sched, ckdir="split").returncode == 0
    p = train(tmp_path, cifar_root, "--resume", "split/cnn_last.pkl", "--epochs", "4", ckdir="split")
    assert p.returncode == 0, p.stderr
    load = lambda d: load_checkpoint(tmp_path / d / "cnn_last.pkl", "cnn").state_dict  # noqa: E731
    a, b = load("straight"), load("split")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class Child:
    """A running CLI whose stdout/stderr are drained by reader threads, so waiting for a line has a deadline
    and can never block on a pipe. Use as a context manager: the child is killed if the test fails."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.text = {"stdout": "", "stderr": ""}
        self.eof = {"stdout": False, "stderr": False}
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._drain, args=(name, getattr(proc, name)), daemon=True)
                        for name in self.text]
        for t in self.threads:
            t.start()

    def _drain(self, name: str, stream) -> None:
        fd = stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self.cond:
                if not chunk:
                    self.eof[name] = True
                    self.cond.notify_all()
                    return
                self.text[name] += chunk.decode("utf-8", "replace")
                self.cond.notify_all()

    def wait_for(self, name: str, needle: str, timeout: float = WAIT) -> None:
        """Block until ``needle`` appears in the stream, failing if it closes or the deadline passes first."""
        with self.cond:
            self.cond.wait_for(lambda: needle in self.text[name] or self.eof[name], timeout)
            found = needle in self.text[name]
        if not found:
            self.proc.kill()
            pytest.fail(f"{needle!r} never appeared on {name}; stdout={self.text['stdout'][-1500:]!r} "
                        f"stderr={self.text['stderr'][-1500:]!r}")

    def finish(self, timeout: float = WAIT) -> tuple[int, str, str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the child did not exit within {timeout}s; stderr={self.text['stderr'][-1500:]!r}")
        for t in self.threads:
            t.join(30)
        with self.cond:
            return rc, self.text["stdout"], self.text["stderr"]

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for s in (self.proc.stdout, self.proc.stderr):
            s.close()


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_last_and_exits_with_a_message(tmp_path, cifar_root, signum, code):
    """Ctrl-C, or the SIGTERM a batch scheduler sends: the step finishes, cnn_last.pkl is saved with the
    position in the epoch, and the exit status is 128 + the signal number."""
    proc = popen_cli("train", "--model", "cnn", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", "ck",
                     "--log-dir", "log", "--quiet", "--epochs", "500", cwd=tmp_path)
    with Child(proc) as child:
        child.wait_for("stdout", "epoch   1/500")          # epoch 1 is done and saved
        proc.send_signal(signum)
        rc, out, err = child.finish()
    assert rc == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"stopped: interrupted at epoch (\d+), step (\d+); state saved to ck/cnn_last.pkl "
                     r"\(continue with --resume ck/cnn_last.pkl\)", last)
    assert m, last
    ck = load_checkpoint(tmp_path / "ck" / "cnn_last.pkl", "cnn")
    assert ck.epoch >= 1
    assert (ck.epoch + 1, ck.step) == (int(m[1]), int(m[2]))     # the file holds what the message says
    assert len(ck.history) == ck.epoch


@pytest.mark.slow
def test_second_ctrl_c_aborts_without_touching_the_checkpoints(tmp_path, cifar_root):
    """Deterministic: the second SIGINT is sent only after the first one's message was seen, while a single
    ResNet-20 step on 500 images (seconds) is still running, so the loop cannot have stopped and saved yet."""
    common = ["--model", "resnet20", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", "ck",
              "--log-dir", "log", "--no-prefetch", "--limit-test", "16"]
    p = run_cli("train", *common, "--quiet", "--epochs", "1", "--limit-train", "16", "--batch-size", "16",
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ck = tmp_path / "ck"
    before = digests(ck)
    assert "resnet20_last.pkl" in before
    proc = popen_cli("train", *common, "--resume", "ck/resnet20_last.pkl", "--epochs", "3", "--limit-train", "500",
                     "--batch-size", "500", cwd=tmp_path)      # not --quiet: the bar shows the loop has started
    with Child(proc) as child:
        child.wait_for("stderr", "epoch 2/3")                  # the bar is drawn inside fit(), under the guard
        proc.send_signal(signal.SIGINT)
        child.wait_for("stderr", "Ctrl-C: stopping after this step")
        proc.send_signal(signal.SIGINT)
        rc, out, err = child.finish()
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("aborted: second Ctrl-C"), err[-1500:]
    assert "stopped:" not in err
    assert digests(ck) == before                                         # nothing saved, no temp file left
    assert load_checkpoint(ck / "resnet20_last.pkl", "resnet20").epoch == 1
