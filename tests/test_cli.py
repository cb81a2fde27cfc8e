"""The entry points as a user runs them: subprocesses on a small dataset in the official format."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def cli(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNN_CIFAR_BACKEND="numpy", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SRC / f"{name}_cli.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train(tmp_path: Path, cifar_root: Path, *extra: str, ckdir: str = "ck") -> subprocess.CompletedProcess:
    return cli("train", "--model", "cnn", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", ckdir,
               "--log-dir", "log", "--quiet", *extra, cwd=tmp_path)


def one_line_error(p: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    import re
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert re.search(pattern, last), last


@pytest.mark.slow
def test_train_resume_and_test_end_to_end(tmp_path, cifar_root):
    p = train(tmp_path, cifar_root, "--epochs", "2")
    assert p.returncode == 0, p.stderr
    ck = tmp_path / "ck"
    assert {"cnn_best.pkl", "cnn_last.pkl", "cnn_history.csv", "cnn_history.jsonl"} <= {f.name for f in ck.iterdir()}
    assert len((tmp_path / "log" / "cnn.log").read_text().splitlines()) == 2
    p = train(tmp_path, cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "3")
    assert p.returncode == 0, p.stderr
    assert "resumed from ck/cnn_last.pkl: 2 epoch(s) done" in p.stdout
    rows = [json.loads(line) for line in (ck / "cnn_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = max(rows, key=lambda r: r["test_acc"])
    t = cli("test", "--model", "cnn", "--resume", "ck/cnn_best.pkl", "--data", str(cifar_root), "--no-download",
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
    load = lambda d: pickle.load(open(tmp_path / d / "cnn_last.pkl", "rb"))["state_dict"]  # noqa: E731
    a, b = load("straight"), load("split")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ctrl_c_saves_last_and_exits_with_a_message(tmp_path, cifar_root):
    env = dict(os.environ, CNN_CIFAR_BACKEND="numpy", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(SRC / "train_cli.py"), "--model", "cnn", "--data", str(cifar_root),
                             "--no-download", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet", "--epochs",
                             "500"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("epoch   1/500") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "stopped: interrupted at epoch" in err.strip().splitlines()[-1]
    ck = pickle.load(open(tmp_path / "ck" / "cnn_last.pkl", "rb"))
    assert ck["epoch"] >= 1


def test_bad_flags_are_argparse_errors(tmp_path, cifar_root):
    for flags, pattern in ((["--epochs", "0"], r"argument --epochs: must be a positive integer, got 0"),
                           (["--batch-size", "-4"], r"argument --batch-size: must be a positive integer, got -4"),
                           (["--lr", "0"], r"argument --lr: must be a positive number, got 0"),
                           (["--lr", "nan"], r"argument --lr: must be a positive number"),
                           (["--model", "vgg"], r"argument --model: invalid choice: 'vgg'"),
                           (["--dropout-rate", "1.5"], r"argument --dropout-rate: must be in \[0, 1\)"),
                           (["--min-dropout", "0.5", "--max-dropout", "0.3"], r"--min-dropout 0.5 is above")):
        one_line_error(train(tmp_path, cifar_root, *flags), 2, pattern)


def test_missing_data_is_one_line(tmp_path, cifar_root):
    p = cli("train", "--model", "cnn", "--data", str(tmp_path / "nowhere"), "--no-download", "--epochs", "1",
            cwd=tmp_path)
    one_line_error(p, 1, r"error: cifar10 not found: .*data_batch_1 is missing")


def test_cupy_without_a_gpu_is_one_line(tmp_path, cifar_root):
    from cnn_cifar import backend
    if backend.cupy_available()[0]:
        pytest.skip("a GPU is present, so --backend cupy is valid here")
    p = train(tmp_path, cifar_root, "--epochs", "1", "--backend", "cupy")
    one_line_error(p, 1, r"error: backend 'cupy' requested but cannot run")


def test_truncated_batch_is_one_line(tmp_path, cifar_root):
    import shutil
    shutil.copytree(cifar_root, tmp_path / "d")
    f = tmp_path / "d" / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:1000])
    p = cli("train", "--data", str(tmp_path / "d"), "--no-download", "--epochs", "1", cwd=tmp_path)
    one_line_error(p, 1, r"error: corrupt or truncated dataset file .*data_batch_2")


def test_test_cli_refusals(tmp_path, cifar_root):
    from cnn_cifar.training import save_checkpoint
    save_checkpoint(tmp_path / "r.pkl", {"model": "resnet20", "state_dict": {}, "epoch": 1})
    p = cli("test", "--model", "cnn", "--resume", "r.pkl", "--data", str(cifar_root), cwd=tmp_path)
    one_line_error(p, 1, r"holds a 'resnet20' model, not 'cnn'")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    p = cli("test", "--model", "cnn", "--resume", "evil.pkl", "--data", str(cifar_root), cwd=tmp_path)
    one_line_error(p, 1, r"refusing to load evil.pkl")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"a": 1}))
    one_line_error(cli("test", "--resume", "x.pkl", cwd=tmp_path), 1, "is not a cnn-cifar-10 checkpoint")
    save_checkpoint(tmp_path / "w.pkl", {"model": "cnn", "state_dict": {"conv1.weight": np.zeros(3)}, "epoch": 1,
                                         "model_config": {"num_classes": 10}})
    p = cli("test", "--resume", "w.pkl", "--data", str(cifar_root), "--no-download", "--quiet", cwd=tmp_path)
    one_line_error(p, 1, r"w.pkl does not fit model 'cnn': .*missing keys")
    p = train(tmp_path, cifar_root, "--resume", "r.pkl", "--model", "cnn", "--epochs", "2")
    one_line_error(p, 1, r"holds a 'resnet20' model, not 'cnn'")


def test_nan_loss_via_cli_keeps_checkpoints(tmp_path, cifar_root):
    assert train(tmp_path, cifar_root, "--epochs", "1").returncode == 0
    best = (tmp_path / "ck" / "cnn_best.pkl").read_bytes()
    p = train(tmp_path, cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "2", "--lr", "1e30",
              "--warmup-epochs", "0")
    one_line_error(p, 1, r"error: loss became (nan|inf) at epoch 2, step \d+; training stopped")
    assert (tmp_path / "ck" / "cnn_best.pkl").read_bytes() == best


def test_help_lists_option_groups(tmp_path):
    out = cli("train", "--help", cwd=tmp_path).stdout
    for group in ("optimizer", "learning-rate scheduling", "dynamic dropout", "data and augmentation",
                  "checkpoints and output", "advanced"):
        assert group in out
