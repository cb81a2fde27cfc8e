"""--tensorboard: the event files tensorboardX writes, read back record by record."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from cnn_cifar.cli import train as train_cli
from cnn_cifar.training import load_checkpoint

tbx = pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (uv sync --group tensorboard)")

BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--batch-size", "32", "--no-prefetch",
        "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]


@pytest.fixture(autouse=True)
def _in_tmp(cli_tmp):
    """Every run here works in tmp_path on NumPy (see conftest.cli_tmp)."""


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in every event file of ``folder``: TFRecords (length, its CRC, an Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_scalars_per_epoch_and_every_n_steps(cifar_root):
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--epochs", "2", "--tensorboard", "tb",
                           "--tensorboard-every", "3"]) == 0
    s = read_scalars(Path("tb"))
    ck = load_checkpoint("ck/cnn_last.pkl")
    for tag, key in (("train/loss", "train_loss"), ("train/accuracy", "train_acc"), ("test/loss", "test_loss"),
                     ("test/accuracy", "test_acc"), ("epoch/lr", "lr"), ("epoch/dropout", "dropout")):
        assert [st for st, _ in s[tag]] == [1, 2], tag
        assert [v for _, v in s[tag]] == pytest.approx([r[key] for r in ck.history], rel=1e-6), tag
    assert [st for st, _ in s["step/loss"]] == [3, 6] and [st for st, _ in s["step/lr"]] == [3, 6]  # 8 steps
    assert "tensorboard" not in ck.args and ck.args["tensorboard_every"] == 3       # a folder, not a setting


def test_resumed_run_continues_the_steps(cifar_root):
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--epochs", "1", "--tensorboard", "tb"]) == 0
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--resume", "ck/cnn_last.pkl", "--epochs", "2",
                           "--tensorboard", "tb", "--tensorboard-every", "2"]) == 0
    s = read_scalars(Path("tb"))
    assert [st for st, _ in s["test/accuracy"]] == [1, 2]
    assert [st for st, _ in s["step/loss"]] == [6, 8]                  # every 2 steps of the second epoch


def test_missing_tensorboardx_is_a_one_line_error(cifar_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)              # import tensorboardX -> ImportError
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(cifar_root), *BASE, "--epochs", "1", "--tensorboard", "tb"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train_cli.py: error: --tensorboard needs tensorboardX, which is not installed: uv sync --group "
        "tensorboard (or pip install tensorboardX)")
    assert not Path("ck").exists()


def test_mixed_precision_logs_the_loss_scale(cifar_root):
    """On the CuPy backend (real or the stand-in) --amp adds the loss scale and the skipped-step count to the
    per-step scalars; the last logged scale is the checkpoint's. Float32 runs log neither."""
    pytest.importorskip("cupy")
    from cnn_cifar import backend
    try:
        assert train_cli.main(["--backend", "cupy", "--amp", "--data", str(cifar_root), *BASE, "--epochs", "1",
                               "--tensorboard", "amp", "--tensorboard-every", "2"]) == 0
    finally:
        backend.set_backend("numpy")
    s = read_scalars(Path("amp"))
    ck = load_checkpoint("ck/cnn_last.pkl")
    assert [st for st, _ in s["step/loss_scale"]] == [2, 4] and [st for st, _ in s["step/skipped_steps"]] == [2, 4]
    assert s["step/loss_scale"][-1][1] == ck.grad_scaler["scale"]
    assert s["step/skipped_steps"][-1][1] == ck.grad_scaler["skipped"]
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--epochs", "1", "--checkpoint-dir", "f32",
                           "--tensorboard", "f32", "--tensorboard-every", "2"]) == 0
    assert "step/loss_scale" not in read_scalars(Path("f32"))
