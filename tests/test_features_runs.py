"""Run control: --early-stop, --save-every, --config / --dump-config (TOML), through train_cli in-process."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.cli import train as train_cli
from cnn_cifar.cli.common import message
from cnn_cifar.errors import SettingError
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.config import resolve
from cnn_cifar.training.hooks import EarlyStopping, SaveSnapshots

BASE = ["--no-download", "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]


@pytest.fixture(autouse=True)
def _in_tmp(cli_tmp):
    """Every run here works in tmp_path on NumPy (see conftest.cli_tmp)."""


def train(cifar_root, *extra: str) -> int:
    return train_cli.main(["--data", str(cifar_root), *BASE, *extra])


def error_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        train_cli.main(list(argv))
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("train_cli.py: error: ")
    return line.removeprefix("train_cli.py: error: ")


# ------------------------------------------------------------------ early stopping
def test_epochs_without_improvement():
    def rows(*best):
        return [{"best": b} for b in best]
    assert EarlyStopping.epochs_without_improvement(rows(True, False, True, False, False)) == 2
    assert EarlyStopping.epochs_without_improvement(rows(True)) == 0
    assert EarlyStopping.epochs_without_improvement([]) == 0


@pytest.fixture
def scripted_accuracy(monkeypatch):
    """The trainer's evaluation returns these test accuracies, epoch by epoch."""
    import cnn_cifar.training.trainer as trainer_mod
    accs = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.5, 0.6, 0.7])

    def evaluate(*a, **k):
        return {"loss": 1.0, "accuracy": next(accs)}
    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)


def test_early_stop_after_patience_epochs_and_on_resume(cifar_root, scripted_accuracy, capsys):
    """Accuracies 0.1 0.3 0.2 0.3 0.25 ...: best at epoch 2, the tie at epoch 4 is no improvement, so with
    patience 3 the run ends after epoch 5; resumed it stops at once, with patience 4 it goes on."""
    assert train(cifar_root, "--early-stop", "3", "--epochs", "8") == 0
    assert "early stop: test accuracy has not improved for 3 epochs (best 30.00% at epoch 2)" in capsys.readouterr().out
    ck = load_checkpoint("ck/cnn_last.pkl")
    assert ck.epoch == 5 and [r["test_acc"] for r in ck.history] == [0.1, 0.3, 0.2, 0.3, 0.25]
    assert ck.args["early_stop"] == 3
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "8") == 0
    assert "early stop" in capsys.readouterr().out and load_checkpoint("ck/cnn_last.pkl").epoch == 5
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "7", "--early-stop", "4") == 0
    ck = load_checkpoint("ck/cnn_last.pkl")
    assert ck.epoch == 7 and ck.history[-1]["test_acc"] == 0.6 and ck.args["early_stop"] == 4


# ------------------------------------------------------------------ snapshots
def test_save_every_keeps_snapshots_that_match_a_shorter_run(cifar_root):
    flags = ["--lr-schedule", "none", "--warmup-epochs", "0", "--dropout-schedule", "none"]
    assert train(cifar_root, *flags, "--save-every", "2", "--epochs", "5") == 0
    names = sorted(os.listdir("ck"))
    assert names == ["cnn_best.pkl", "cnn_epoch2.pkl", "cnn_epoch4.pkl", "cnn_history.csv", "cnn_history.jsonl",
                     "cnn_last.pkl"]                                     # no temp files
    snap = load_checkpoint("ck/cnn_epoch2.pkl")
    assert (snap.epoch, snap.args["save_every"]) == (2, 2)
    assert train(cifar_root, *flags, "--epochs", "2", "--checkpoint-dir", "two") == 0
    two = load_checkpoint("two/cnn_last.pkl")
    assert all(np.array_equal(snap.state_dict[k], two.state_dict[k]) for k in two.state_dict)


# ------------------------------------------------------------------ TOML settings
def test_dump_config_then_config_reproduces_the_settings(cifar_root, capsys):
    flags = ["--model", "resnet8", "--lr", "0.05", "--no-nesterov", "--lr-schedule", "step", "--lr-decay-steps", "3",
             "6", "--shift-scale-rotate", "0.0625", "0.1", "15", "--no-flip", "--min-lr", "1e-6", "--ema", "0.99"]
    assert train(cifar_root, *flags, "--dump-config", "run.toml") == 0
    assert "wrote run.toml" in capsys.readouterr().out and not Path("ck").exists()
    data = tomllib.loads(Path("run.toml").read_text())
    assert data["lr-decay-steps"] == [3.0, 6.0] and data["nesterov"] is False and data["min-lr"] == 1e-6
    assert "max-lr" not in data                                          # None: left out, the default
    parser = train_cli.build_parser()
    want = resolve(vars(parser.parse_args(["--data", str(cifar_root), *BASE, *flags])))
    got = resolve(vars(train_cli.parse_args(parser, ["--config", "run.toml"])))
    assert got == want


def test_config_keys_dashed_or_dest_and_the_command_line_wins(cifar_root):
    Path("c.toml").write_text('lr = 0.05\nlr_schedule = "onecycle"\npct-start = 0.25\nnesterov = true\n'
                              'color-jitter = [0.2, 0.2, 0.2, 0.02]\nno-flip = true\nepochs = 3\n')
    parser = train_cli.build_parser()
    cfg = resolve(vars(train_cli.parse_args(parser, ["--config", "c.toml", "--lr", "0.01", "--epochs", "1"])))
    assert (cfg.lr, cfg.lr_schedule, cfg.pct_start, cfg.nesterov, cfg.no_flip, cfg.epochs) == \
        (0.01, "onecycle", 0.25, True, True, 1)
    assert cfg.color_jitter == (0.2, 0.2, 0.2, 0.02)
    assert train(cifar_root, "--config", "c.toml") == 0                   # BASE's --epochs 1 wins over 3
    ck = load_checkpoint("ck/cnn_last.pkl")
    assert (ck.epoch, ck.args["lr"], ck.args["lr_schedule"]) == (1, 0.05, "onecycle")


@pytest.mark.parametrize("text,msg", [
    ("lrr = 0.1\n", "c.toml: unknown setting 'lrr' (use a train_cli flag's name, e.g. lr-schedule)"),
    ("config = 'x.toml'\n", "c.toml: unknown setting 'config'"),
    ("lr = -1\n", "c.toml: argument --lr: must be a positive number, got -1"),
    ("lr-schedule = 'fast'\n", "c.toml: argument --lr-schedule: invalid choice: 'fast'"),
    ("nesterov = 1\n", "c.toml: nesterov must be true or false, got 1"),
    ("lr = [0.1, 0.2]\n", "c.toml: lr cannot be [0.1, 0.2]"),
    ("lr = \n", "c.toml is not a readable TOML file: "),
])
def test_config_file_errors_are_one_line(capsys, text, msg):
    Path("c.toml").write_text(text)
    assert error_line(capsys, "--config", "c.toml").startswith(msg)


@pytest.mark.parametrize("make,words", [
    (lambda: EarlyStopping(0), ("EarlyStopping patience", "EarlyStopping --early-stop")),
    (lambda: SaveSnapshots(-1), ("SaveSnapshots every", "SaveSnapshots --save-every")),
])
def test_run_control_errors_name_the_parameter_and_on_the_command_line_the_flag(make, words):
    """The hooks state the condition with their parameter's name; train_cli's wording of an error (what reaches
    them without the parser's checks: a checkpoint's settings) names the flag."""
    with pytest.raises(SettingError) as exc:
        make()
    library, cli = words
    assert str(exc.value).startswith(f"{library} must be a positive number of epochs, got ")
    assert message(exc.value).startswith(f"{cli} must be a positive number of epochs, got ")


def test_missing_config_file_and_bad_early_stop(capsys):
    assert error_line(capsys, "--config", "nope.toml") == "config file not found: nope.toml"
    assert error_line(capsys, "--early-stop", "-2") == "argument --early-stop: must be a non-negative integer, got -2"
