"""Plots and summary from a synthetic history and evaluation; bad history files. visualize_cli runs
in-process through main(argv) except for one run of the real script; the train/test --plot run is slow."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.cli import visualize as visualize_cli
from cnn_cifar.training import write_history
from cnn_cifar.viz import HistoryError, read_history, summary_text

from conftest import CLASSES, run_cli


def history(n=12):
    rows = []
    for e in range(1, n + 1):
        rows.append({"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 + 0.05 * e, "test_loss": 1.8 / e + 0.1,
                     "test_acc": 0.32 + 0.04 * e - (0.06 if e == n else 0), "lr": 0.02 * e / n,
                     "dropout": 0.6 - 0.4 * (e - 1) / (n - 1), "seconds": 10.0, "best": False})
    return rows


def evaluation():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (10, 10)) + np.diag(rng.integers(50, 90, 10))
    from cnn_cifar.training import classification_report
    rep = classification_report(cm, CLASSES)
    return {"model": "cnn", "n": int(cm.sum()), "accuracy": rep["accuracy"], "per_class": rep["per_class"],
            "macro": rep["macro"], "confusion_matrix": cm.tolist(), "classes": CLASSES}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_every_file_from_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_history(tmp_path / "ck", "cnn", history())
    (tmp_path / "eval.json").write_text(json.dumps(evaluation()))
    assert visualize_cli.main(["--run-dir", "ck", "--eval-json", "eval.json", "--out", "viz"]) == 0
    out = tmp_path / "viz"
    assert capsys.readouterr().out.count("wrote viz/") == 5
    for name in ("training_progress", "comparison", "per_class_accuracy", "confusion_matrix"):
        f = out / f"cnn_{name}.png"
        w, h = png_size(f)
        assert 600 <= w <= 4000 and 300 <= h <= 4000, (name, w, h)
        assert f.stat().st_size > 20_000, name
    assert (out / "cnn_training_summary.txt").is_file()


def test_summary_numbers():
    text = summary_text(history(), "cnn")
    assert "epochs: 12" in text
    assert "best epoch: 11" in text                          # epoch 12 dips by 6 points
    assert f"best test accuracy: {100 * (0.32 + 0.44):.2f}%" in text
    assert f"final test accuracy: {100 * (0.32 + 0.48 - 0.06):.2f}%" in text
    assert f"final train loss: {2.0 / 12:.4f}" in text
    assert "total training time: 120.0 s" in text


def test_csv_and_jsonl_read_the_same(tmp_path):
    csv_path, jsonl_path = write_history(tmp_path, "m", history(3))
    a, b = read_history(csv_path), read_history(jsonl_path)
    assert a == b and a[1]["epoch"] == 2 and a[1]["lr"] == pytest.approx(0.02 * 2 / 3)


def test_several_runs_overlay(tmp_path):
    for d, n in (("a", 5), ("b", 8)):
        write_history(tmp_path / d, "cnn", history(n))
    p = run_cli("visualize", "--history", "a/cnn_history.csv", "b/cnn_history.jsonl", "--labels", "short", "long",
                "--out", "cmp", cwd=tmp_path, timeout=120)       # the real script, once
    assert p.returncode == 0, p.stderr
    png_size(tmp_path / "cmp" / "runs_comparison.png")
    assert (tmp_path / "cmp" / "long_training_summary.txt").read_text().startswith("model: long")


@pytest.mark.parametrize("content,pattern", [(None, "history file not found"), ("", "history file is empty"),
                                             ("epoch,loss\n1,2\n", "lacks one of"),
                                             ('{"epoch": 1, "train_loss": \n', "malformed history file"),
                                             ("epoch,train_loss,train_acc,test_loss,test_acc\n1,x,1,1,1\n", "row 1")])
def test_bad_history_is_one_line_error(tmp_path, monkeypatch, capsys, content, pattern):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ("h.jsonl" if content and content.startswith("{") else "h.csv")
    if content is not None:
        path.write_text(content)
    with pytest.raises(HistoryError, match=pattern):
        read_history(path)
    assert visualize_cli.main(["--history", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and pattern in err
    assert not (tmp_path / "viz").exists()


@pytest.mark.slow
def test_train_and_test_cli_plot_flags(tmp_path, cifar_root):
    p = run_cli("train", "--data", str(cifar_root), "--no-download", "--epochs", "2", "--checkpoint-dir", "ck",
                "--log-dir", "log", "--quiet", "--plot", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    png_size(tmp_path / "viz" / "cnn" / "cnn_training_progress.png")
    p = run_cli("test", "--resume", "ck/cnn_best.pkl", "--data", str(cifar_root), "--no-download", "--quiet", "--plot",
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    png_size(tmp_path / "viz" / "cnn" / "cnn_confusion_matrix.png")
    png_size(tmp_path / "viz" / "cnn" / "cnn_per_class_accuracy.png")
