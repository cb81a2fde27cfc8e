"""The schedules added to train_cli (onecycle, plateau, MultiStepLR milestones), end to end in-process, and
every command of the original README (../shared/seeds/000_*.txt) parsed and resolved as written."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.cli import test as test_cli
from cnn_cifar.cli import train as train_cli
from cnn_cifar.optim import LRSchedule
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.config import resolve

ROOT = Path(__file__).resolve().parents[1]
SEED_README = sorted((ROOT.parent / "shared" / "seeds").glob("000_*.txt"))
BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]

# The original README's commands, as written there (checked against the file itself when it is present).
ORIGINAL_COMMANDS = [
    "uv run src/train_cli.py --model cnn",
    "uv run src/train_cli.py --model resnet32",
    "uv run src/train_cli.py --model cnn --resume checkpoint/cnn_best.pkl.bak",
    "uv run src/train_cli.py --model cnn --lr 0.02 --lr-schedule step --lr-decay-steps 50 100 150 175 "
    "--lr-decay-factor 0.1 --dropout-schedule linear_decay --epochs 200",
    "uv run src/train_cli.py --model resnet32 --lr 0.01 --lr-schedule cosine --warmup-epochs 10 "
    "--dropout-schedule adaptive --min-dropout 0.1 --max-dropout 0.5 --epochs 100",
    "uv run src/train_cli.py --model cnn --lr 0.025 --lr-schedule cosine --warmup-epochs 15 --min-lr 1e-6 "
    "--optimizer sgd --dropout-rate 0.6 --dropout-schedule linear_decay --min-dropout 0.2 --max-dropout 0.7 "
    "--batch-size 64 --epochs 200 --checkpoint-dir checkpoint --data data/cifar-10-batches-py",
    "uv run src/test_cli.py --model resnet32 --resume checkpoint/resnet32_best.pkl",
]


@pytest.fixture(autouse=True)
def _in_tmp(cli_tmp):
    """Every run here works in tmp_path on NumPy (see conftest.cli_tmp)."""


def train(cifar_root: Path, *extra: str) -> int:
    return train_cli.main(["--data", str(cifar_root), *BASE, *extra])


def last(ckdir: str = "ck", model: str = "cnn"):
    return load_checkpoint(Path(ckdir) / f"{model}_last.pkl", model)


def argparse_error(capsys, *argv: str) -> str:
    """The one error line of train_cli for ``argv`` (asserting exit status 2 and nothing trained)."""
    with pytest.raises(SystemExit) as exc:
        train_cli.main(list(argv))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("train_cli.py: error: ") and not Path("ck").exists()
    return lines[-1].removeprefix("train_cli.py: error: ")


def readme_commands(text: str) -> list[str]:
    """The train_cli/test_cli command lines of a README (continuation backslashes joined)."""
    text = re.sub(r"\\\n\s*", "", text)
    return [" ".join(line.split()) for line in text.splitlines()
            if re.match(r"\s*uv run src/(train|test)_cli\.py", line)]


@pytest.mark.skipif(not SEED_README, reason="../shared/seeds/000_*.txt is not in this checkout")
def test_the_list_is_the_original_readmes_commands():
    assert readme_commands(SEED_README[0].read_text()) == ORIGINAL_COMMANDS


@pytest.mark.parametrize("command", ORIGINAL_COMMANDS)
def test_original_readme_commands_parse_and_resolve(command):
    script, *argv = shlex.split(command)[2:]
    if script.endswith("test_cli.py"):
        args = test_cli.build_parser().parse_args(argv)
        assert (args.model, args.resume) == ("resnet32", "checkpoint/resnet32_best.pkl")
        return
    cfg = resolve(vars(train_cli.build_parser().parse_args(argv)))
    assert cfg.model in ("cnn", "resnet32")
    if "--lr-decay-steps" in argv:
        assert cfg.lr_decay_steps == (50.0, 100.0, 150.0, 175.0)
        s = cfg.make_lr_schedule()
        assert [s(e) for e in (49, 50, 100, 150, 175)] == pytest.approx([0.02, 2e-3, 2e-4, 2e-5, 2e-6])


def test_lr_decay_steps_one_value_is_an_interval():
    cfg = resolve(vars(train_cli.build_parser().parse_args(["--lr-schedule", "step", "--lr-decay-steps", "60"])))
    assert cfg.lr_decay_steps == 60.0 and cfg.make_lr_schedule().milestones is None
    # a checkpoint stores the milestones as a list; resolve turns them back into the tuple
    saved = resolve({}, {"lr_decay_steps": [30, 60], "lr_schedule": "step"})
    assert saved.lr_decay_steps == (30, 60)


def test_onecycle_drops_the_recipes_warmup():
    cfg = resolve(vars(train_cli.build_parser().parse_args(["--lr-schedule", "onecycle", "--max-lr", "0.1"])))
    assert (cfg.warmup_epochs, cfg.max_lr, cfg.pct_start, cfg.lr) == (0.0, 0.1, 0.3, 0.02)    # cnn: warmup 10


@pytest.mark.parametrize("flags,warning", [
    ([], "warning: the warm-up (10 epochs) is not shorter than the run (1 epochs): the learning rate reaches "
         "0.002 of its 0.02 and never decays"),                              # SimpleCNN's recipe: 10 warm-up epochs
    (["--lr-schedule", "none", "--warmup-epochs", "2"],
     "warning: the warm-up (2 epochs) is not shorter than the run (1 epochs): the learning rate reaches 0.01 of "
     "its 0.02"),
    (["--warmup-epochs", "0.5"], None), (["--lr-schedule", "onecycle"], None),
])
def test_a_warm_up_as_long_as_the_run_is_one_warning_line(cifar_root, capsys, flags, warning):
    assert train_cli.main(["--data", str(cifar_root), *BASE, *flags]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == ([warning] if warning else [])


@pytest.mark.parametrize("flags,msg", [
    (["--lr-schedule", "onecycle", "--max-lr", "0.01"], "--max-lr 0.01 is below --lr 0.02"),
    (["--lr-schedule", "onecycle", "--warmup-epochs", "2"], "--lr-schedule onecycle warms up by itself over "
                                                            "--pct-start of the run; drop --warmup-epochs"),
    (["--pct-start", "1"], "argument --pct-start: must be in (0, 1), got 1"),
    (["--plateau-factor", "1.5"], "argument --plateau-factor: must be in (0, 1), got 1.5"),
    (["--plateau-patience", "-1"], "argument --plateau-patience: must be a non-negative integer, got -1"),
    (["--lr-schedule", "step", "--lr-decay-steps", "100", "50"],
     "lr decay milestones must be increasing epochs, got 100 50"),
    (["--lr-decay-steps"], "argument --lr-decay-steps: expected at least one argument"),
])
def test_schedule_flag_errors_are_one_line(capsys, flags, msg):
    assert argparse_error(capsys, "--epochs", "1", *flags) == msg


def test_onecycle_through_the_cli_follows_torch(cifar_root):
    """2 epochs of 4 steps: the history's lr is the one of each epoch's last step (steps 3 and 7 of
    torch 2.13.0's OneCycleLR(max_lr=0.2, epochs=2, steps_per_epoch=4, pct_start=0.25))."""
    assert train(cifar_root, "--lr-schedule", "onecycle", "--lr", "0.05", "--max-lr", "0.2", "--pct-start", "0.25",
                 "--epochs", "2") == 0
    ck = last()
    assert [r["lr"] for r in ck.history] == pytest.approx([0.1500002, 8e-07], rel=1e-12)
    assert ck.schedule["lr"]["steps_per_epoch"] == 4 and ck.schedule["lr"]["kind"] == "onecycle"
    assert (ck.args["max_lr"], ck.args["pct_start"], ck.args["warmup_epochs"]) == (0.2, 0.25, 0.0)


def test_plateau_state_survives_resume_exactly(cifar_root):
    """Patience 0 and a high lr: the test loss stalls and the lr is cut; 2 epochs + resume to 3 give the same
    weights, history and plateau state as 3 straight."""
    flags = ["--lr-schedule", "plateau", "--plateau-patience", "0", "--plateau-factor", "0.5", "--lr", "0.3",
             "--warmup-epochs", "0", "--dropout-schedule", "none"]
    assert train(cifar_root, *flags, "--epochs", "3", "--checkpoint-dir", "a") == 0
    assert train(cifar_root, *flags, "--epochs", "2", "--checkpoint-dir", "b") == 0
    assert train(cifar_root, "--resume", "b/cnn_last.pkl", "--epochs", "3", "--checkpoint-dir", "b") == 0
    a, b = last("a"), last("b")
    assert a.schedule["lr"]["state"] == b.schedule["lr"]["state"]
    assert [r["lr"] for r in a.history] == [r["lr"] for r in b.history]
    assert all(np.array_equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    # the lr each epoch ran at follows the rule on the recorded test losses (patience 0: any non-improvement cuts)
    lr, best = 0.3, float("inf")
    for row in a.history:
        assert row["lr"] == pytest.approx(lr, rel=1e-12)
        if row["test_loss"] < best * (1 - 1e-4):
            best = row["test_loss"]
        else:
            lr *= 0.5
    assert a.schedule["lr"]["state"]["lr"] == pytest.approx(lr, rel=1e-12)
    assert (a.args["plateau_patience"], a.args["plateau_factor"]) == (0, 0.5)


DOCUMENTED = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("command", sorted({c for page in DOCUMENTED for c in readme_commands(page.read_text())}))
def test_every_documented_command_parses_and_resolves(command):
    """Every train_cli / test_cli command README.md and the manual (docs/) show is accepted as written."""
    script, *argv = shlex.split(command.split(" #")[0])[2:]
    if script.endswith("test_cli.py"):
        test_cli.build_parser().parse_args(argv)
        return
    parser = train_cli.build_parser()
    args = parser.parse_args(argv)
    if args.config is None:                          # (a --config file is written by the command before it)
        resolve(vars(args))


# ------------------------------------------------------------------ the piecewise-linear schedule
def test_piecewise_schedule_is_linear_between_its_points():
    """lr = base * f(t / total) with f linear between (fraction, factor) points (LambdaLR with such an f); the
    default is the fast recipes' triangle: 0.2 -> 1 over 23% of the run, then down to 0.07."""
    s = LRSchedule("piecewise", 0.5, 100)
    assert s.points == (0.0, 0.2, 0.23, 1.0, 1.0, 0.07)
    for t, factor in ((0, 0.2), (11.5, 0.6), (23, 1.0), (61.5, 0.535), (100, 0.07), (120, 0.07)):
        assert s(t) == pytest.approx(0.5 * factor, rel=1e-12), t
    own = LRSchedule("piecewise", 1.0, 10, points=(0, 1, 0.5, 0, 1, 0.5), min_lr=0.1)
    assert [own(t) for t in (0, 2.5, 5, 7.5, 10)] == pytest.approx([1.0, 0.5, 0.1, 0.25, 0.5])   # floored at 0.1


def test_piecewise_through_the_cli_follows_its_points(cifar_root):
    """4 epochs of 4 steps: each epoch's history lr is the one of its last step, t = epoch + 1."""
    assert train(cifar_root, "--lr-schedule", "piecewise", "--lr", "0.1", "--lr-points", "0", "0.5", "0.5", "1",
                 "1", "0", "--epochs", "4") == 0
    ck = last()
    assert [round(r["lr"], 12) for r in ck.history] == [0.075, 0.1, 0.05, 0.0]
    assert ck.args["lr_points"] == [0.0, 0.5, 0.5, 1.0, 1.0, 0.0] and ck.args["warmup_epochs"] == 0.0  # (cnn: 10)
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "4") == 0                   # restored


@pytest.mark.parametrize("points,msg", [
    (["0", "1", "1"], "--lr-points must be pairs of fraction and factor, at least two, got 0 1 1"),
    (["0.1", "1", "1", "0"], "--lr-points' fractions must rise from 0 to 1, got 0.1 1"),
    (["0", "1", "0.6", "2", "0.5", "1", "1", "0"], "--lr-points' fractions must rise from 0 to 1, got 0 0.6 0.5 1"),
    (["0", "-1", "1", "0"], "argument --lr-points: must be a non-negative number, got -1"),
])
def test_piecewise_points_that_make_no_sense_are_one_line(capsys, points, msg):
    assert argparse_error(capsys, "--epochs", "1", "--lr-schedule", "piecewise", "--lr-points", *points) == msg


def test_piecewise_with_a_warm_up_is_refused(capsys):
    assert argparse_error(capsys, "--epochs", "1", "--lr-schedule", "piecewise", "--warmup-epochs", "2") == (
        "--lr-schedule piecewise warms up by itself in its --lr-points; drop --warmup-epochs")
