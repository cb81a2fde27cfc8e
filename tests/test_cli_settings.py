"""What each CLI setting does, checked in-process: ``train_cli.main([...])`` / ``test_cli.main([...])`` on a
small slice of the fake CIFAR-10 (128 train / 64 test images, batches of 32), then the checkpoint, history
or recorded objects say what the flag did. Settings resolution is unit-tested against the manual's table."""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import test as test_cli
from cnn_cifar.cli import train as train_cli
from cnn_cifar.data.datasets import CIFAR10
from cnn_cifar.models import list_models, recipe
from cnn_cifar.optim import LRSchedule
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.config import FIELDS, RECIPE_FIELDS, RESTORED
from cnn_cifar.training.config import resolve as resolve_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log"]


@pytest.fixture(autouse=True)
def _in_tmp(cli_tmp):
    """Every run here works in tmp_path on NumPy (see conftest.cli_tmp)."""


def train(cifar_root: Path, *extra: str, quiet: bool = True) -> int:
    """train_cli.main on the small slice; later flags in ``extra`` override BASE (argparse keeps the last)."""
    before = signal.getsignal(signal.SIGINT)
    rc = train_cli.main(["--data", str(cifar_root), *BASE, *(["--quiet"] if quiet else []), *extra])
    assert signal.getsignal(signal.SIGINT) is before, "the SIGINT handler was not restored"
    return rc


def last(ckdir: str = "ck", model: str = "cnn"):
    return load_checkpoint(Path(ckdir) / f"{model}_last.pkl", model)


def weights(sd: dict) -> dict:
    return {k: backend.to_numpy(v).copy() for k, v in sd.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def loaders(monkeypatch):
    """Every BatchLoader the CLI builds, in order (train first, then test)."""
    import cnn_cifar.data
    made = []

    class Recording(cnn_cifar.data.BatchLoader):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    import cnn_cifar.training.evaluation
    for module in (train_cli, cnn_cifar.training.evaluation):      # train_cli's loaders, then test_cli's
        monkeypatch.setattr(module, "BatchLoader", Recording)
    return made


# ------------------------------------------------------------------ (a) settings resolution
def parse(*argv: str):
    return train_cli.build_parser().parse_args(list(argv))


def resolve(args, saved: dict | None = None) -> dict:
    """The settings train_cli resolves from parsed flags (and, resuming, a checkpoint's saved settings), as a
    dict."""
    return resolve_config(vars(args), saved, args.resume if saved is not None else None).to_dict()


def _schedule(cell: str) -> dict:
    if m := re.fullmatch(r"(\w+), ([\d.]+) warmup epochs?", cell):
        return {"lr_schedule": m[1], "warmup_epochs": float(m[2]), "min_lr": 0.0}
    if m := re.fullmatch(r"(\w+) to ([\d.e-]+), no warmup", cell):
        return {"lr_schedule": m[1], "warmup_epochs": 0.0, "min_lr": float(m[2])}
    if m := re.fullmatch(r"onecycle to ([\d.]+), (\d+)% rising", cell):
        return {"lr_schedule": "onecycle", "peak_lr": float(m[1]), "pct_start": int(m[2]) / 100}
    if m := re.fullmatch(r"piecewise, ([\d.]+) → ([\d.]+) over (\d+)% of the steps → ([\d.]+)", cell):
        return {"lr_schedule": "piecewise", "warmup_epochs": 0.0, "min_lr": 0.0,
                "lr_points": None if (m[1], m[2], m[3], m[4]) == ("0.2", "1", "23", "0.07") else "not the default"}
    m = re.fullmatch(r"plateau, ×([\d.]+) after (\d+) stalled epochs", cell)
    return {"lr_schedule": "plateau", "plateau_factor": float(m[1]), "plateau_patience": int(m[2])}


def _dropout(cell: str) -> dict:
    if m := re.fullmatch(r"([\d.]+) → ([\d.]+), (linear|cosine) decay", cell):
        return {"dropout_rate": float(m[1]), "min_dropout": float(m[2]), "dropout_schedule": f"{m[3]}_decay"}
    m = re.fullmatch(r"none \(([\d.]+)\)|([\d.]+), fixed.*", cell)
    return {"dropout_rate": float(m[1] or m[2]), "dropout_schedule": "none"}


def _augmentation(cell: str) -> dict:
    e = {"crop_padding": 0, "no_flip": True, "no_augment": False, "shift_scale_rotate": None, "color_jitter": None,
         "cutout": 0, "translate": 0, "alternating_flip": False}
    for part in cell.split(" + "):
        if m := re.fullmatch(r"random crop \(pad (\d+)\)", part):
            e["crop_padding"] = int(m[1])
        elif m := re.fullmatch(r"translate (\d+) \(reflect\)", part):
            e["translate"] = int(m[1])
        elif part == "horizontal flip":
            e["no_flip"] = False
        elif part == "alternating flip":
            e["no_flip"], e["alternating_flip"] = False, True
        elif m := re.fullmatch(r"shift-scale-rotate \(([\d.]+), ([\d.]+), ([\d.]+)°\) at p ([\d.]+)", part):
            e["shift_scale_rotate"], e["ssr_p"] = tuple(float(v) for v in m.groups()[:3]), float(m[4])
        elif m := re.fullmatch(r"colour jitter \(([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\)", part):
            e["color_jitter"] = tuple(float(v) for v in m.groups())
        else:
            m = re.fullmatch(r"(\d+)×\1 cutout(?: at p ([\d.]+))?", part)
            e["cutout"], e["cutout_p"] = int(m[1]), float(m[2] or 1.0)
    return e


def _also(cell: str) -> dict:
    e = {"clip_grad_norm": 0.0, "label_smoothing": 0.0, "amp": False, "loss_reduction": "mean", "bn_lr_scale": 1.0,
         "lookahead_period": None, "freeze_after": None, "tta": "none"}
    for part in cell.split(" + "):
        if m := re.fullmatch(r"gradient clipping ([\d.]+)", part):
            e["clip_grad_norm"] = float(m[1])
        elif m := re.fullmatch(r"label smoothing ([\d.]+)", part):
            e["label_smoothing"] = float(m[1])
        elif part == "mixed precision (CuPy)":
            e["amp"] = True
        elif part == "loss summed over the batch":
            e["loss_reduction"] = "sum"
        elif m := re.fullmatch(r"batch norms at ([\d.]+)× lr", part):
            e["bn_lr_scale"] = float(m[1])
        elif m := re.fullmatch(r"lookahead every (\d+) steps", part):
            e["lookahead_period"] = int(m[1])
        elif m := re.fullmatch(r"([\w.]+) frozen after ([\d.]+) epochs", part):
            e["freeze_after"] = (f"{m[1]}={m[2]}",)
        elif m := re.fullmatch(r"([\w-]+) TTA", part):
            e["tta"] = m[1]
        else:
            assert part == "–", f"unknown 'also' entry {part!r}"
    return e


def readme_defaults() -> dict[str, dict]:
    """The manual's "Per-model defaults" table (docs/training.md) turned into effective-setting values, per
    model (a column headed `resnet8/14/...` stands for each of those ResNets)."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("## Per-model defaults", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")][1:]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    out = {}
    for col, head in enumerate(header):
        r = {k: v[col] for k, v in rows.items()}
        e = {"optimizer": r["optimizer"].split(",")[0].strip().lower(),
             "momentum": float(m[1]) if (m := re.search(r"momentum ([\d.]+)", r["optimizer"])) else 0.9,
             "nesterov": "Nesterov" in r["optimizer"],
             "lr": float(r["learning rate"].split()[0]), "weight_decay": float(r["weight decay (L2)"].split()[0]),
             "batch_size": int(r["batch size"]), "epochs": float(r["epochs"]),
             **_schedule(r["schedule"]), **_dropout(r["dropout"]), **_augmentation(r["augmentation"]),
             **_also(r["also"])}
        first, *numbers = re.fullmatch(r"`([^`]+)`.*", head)[1].split("/")
        family = re.fullmatch(r"([a-z-]+?)\d*", first)[1]
        for name in [first] + [family + n for n in numbers]:
            out[name] = e
    return out


def test_readme_table_parses():
    t = readme_defaults()
    assert set(t) == set(list_models()) and len(t["cnn"]) == 29
    assert t["cnn"]["lr"] != t["resnet32"]["lr"] and t["cifarnet"]["clip_grad_norm"] == 1.0
    assert t["cifarnet"]["amp"] and not t["cnn"]["amp"]


@pytest.mark.parametrize("model", list_models())
def test_defaults_match_the_readme_table(model):
    want = dict(readme_defaults()[model])
    eff = resolve(parse("--model", model))
    assert eff["model"] == model
    if "peak_lr" in want:
        assert (eff["max_lr"] or eff["lr"]) == want.pop("peak_lr")
    for k in ("lr", "weight_decay"):               # written to 6 significant digits where they are arithmetic
        assert eff[k] == pytest.approx(want.pop(k), rel=1e-5), k
    assert {k: eff[k] for k in want} == want


def test_defaults_pinned():
    """The full resolved defaults, written out: an edit of a registered Recipe shows up here."""
    cnn = resolve(parse())
    assert {k: cnn[k] for k in RESTORED} == dict(
        model="cnn", shortcut=None, optimizer="sgd", lr=0.02, momentum=0.9, nesterov=False, weight_decay=5e-4,
        batch_size=64, epochs=200, lr_schedule="cosine", warmup_epochs=10.0, min_lr=0.0,
        dropout_schedule="linear_decay", dropout_rate=0.6, min_dropout=0.2, max_dropout=0.7,
        dataset="cifar10", data="data", seed=0, beta1=0.9,
        beta2=0.999, lr_decay_factor=0.1, lr_decay_steps=None, label_smoothing=0.0, amp=False, crop_padding=4, cutout=0,
        no_augment=False, no_flip=False, limit_train=None, limit_test=None,
        max_lr=None, pct_start=0.3, lr_points=None, plateau_factor=0.1, plateau_patience=2, clip_grad_norm=0.0,
        ema=0.0,
        ema_bn_batches=40,
        cutout_fill="mean", cutout_p=1.0, shift_scale_rotate=None, ssr_p=0.5, ssr_border="reflect", color_jitter=None,
        mixup=0.0, cutmix=0.0, translate=0, alternating_flip=False, early_stop=0, save_every=0, tensorboard_every=50,
        loss_reduction="mean", bn_lr_scale=1.0, lookahead_period=None, freeze_after=None, tta="none",
        log_dir="log")
    res = resolve(parse("--model", "resnet56"))
    assert {k: res[k] for k in RECIPE_FIELDS} == dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128, epochs=200,
        lr_schedule="cosine", warmup_epochs=1.0, min_lr=0.0, dropout_schedule="none", dropout_rate=0.0,
        min_dropout=0.0, max_dropout=0.5, beta1=0.9, beta2=0.999, lr_decay_factor=0.1, lr_decay_steps=None,
        max_lr=None, pct_start=0.3, lr_points=None, plateau_factor=0.1, plateau_patience=2, clip_grad_norm=0.0,
        ema=0.0,
        ema_bn_batches=40,
        label_smoothing=0.0, amp=False, crop_padding=4, no_flip=False, cutout=0, cutout_fill="mean", cutout_p=1.0,
        shift_scale_rotate=None, ssr_p=0.5, ssr_border="reflect", color_jitter=None, mixup=0.0, cutmix=0.0,
        translate=0, alternating_flip=False, loss_reduction="mean", bn_lr_scale=1.0, lookahead_period=None,
        freeze_after=None, tta="none")
    assert (cnn["checkpoint_dir"], cnn["log_dir"]) == (res["checkpoint_dir"], res["log_dir"]) == ("checkpoint", "log")


def test_user_flags_override_model_defaults():
    eff = resolve(parse("--model", "resnet20", "--lr", "0.05", "--no-nesterov", "--batch-size", "32",
                                  "--dropout-rate", "0.3", "--no-flip", "--seed", "7"))
    assert (eff["lr"], eff["nesterov"], eff["batch_size"], eff["dropout_rate"], eff["no_flip"], eff["seed"]) == \
        (0.05, False, 32, 0.3, True, 7)
    assert (eff["momentum"], eff["warmup_epochs"], eff["epochs"]) == (0.9, 1.0, 200)      # the rest: resnet's
    assert resolve(parse("--nesterov"))["nesterov"] is True                      # cnn's default is off


SAVED = {"model": "resnet20", "lr": 0.3, "nesterov": False, "batch_size": 16, "epochs": 7, "dropout_rate": 0.1,
         "no_flip": True, "limit_train": 100, "seed": 3, "checkpoint_dir": "elsewhere", "log_dir": "old-log",
         "backend": "cupy"}


def test_checkpoint_settings_win_over_model_defaults_on_resume():
    eff = resolve(parse("--resume", "runs/r.pkl"), dict(SAVED))
    assert eff["model"] == "resnet20"
    assert (eff["lr"], eff["nesterov"], eff["batch_size"], eff["epochs"], eff["dropout_rate"], eff["no_flip"],
            eff["limit_train"], eff["seed"]) == (0.3, False, 16, 7, 0.1, True, 100, 3)
    assert (eff["momentum"], eff["warmup_epochs"], eff["dropout_schedule"]) == (0.9, 1.0, "none")  # resnet's
    # the checkpoints go beside the one resumed, the log where the run logged; the backend is this machine's
    assert (eff["checkpoint_dir"], eff["log_dir"]) == ("runs", "old-log")
    assert eff["backend"] == "numpy"                       # from $CNN_CIFAR_BACKEND (set above), not "cupy"


def test_flags_given_again_win_over_the_checkpoint():
    eff = resolve(parse("--resume", "r.pkl", "--lr", "0.01", "--nesterov", "--epochs", "9",
                                  "--checkpoint-dir", "new"), dict(SAVED))
    assert (eff["lr"], eff["nesterov"], eff["epochs"], eff["checkpoint_dir"]) == (0.01, True, 9, "new")
    assert (eff["batch_size"], eff["dropout_rate"]) == (16, 0.1)          # not given again: the checkpoint's


def test_resume_through_the_cli_keeps_then_overrides_settings(cifar_root):
    assert train(cifar_root, "--lr", "0.05", "--momentum", "0.5", "--weight-decay", "0.001", "--warmup-epochs", "0",
                 "--lr-schedule", "none") == 0
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "2") == 0
    ck = last()
    assert (ck.args["lr"], ck.args["momentum"], ck.args["weight_decay"]) == (0.05, 0.5, 0.001)
    assert ck.optimizer["hyper"] == {"momentum": 0.5, "nesterov": False, "weight_decay": 0.001}
    assert [r["lr"] for r in ck.history] == [0.05, 0.05]
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "3", "--momentum", "0.8") == 0
    ck = last()
    assert ck.args["momentum"] == 0.8 and ck.optimizer["hyper"]["momentum"] == 0.8
    assert ck.args["lr"] == 0.05 and len(ck.history) == 3


def test_resume_with_no_epochs_left_does_nothing(cifar_root, capsys):
    assert train(cifar_root, "--epochs", "2") == 0
    before = Path("ck/cnn_last.pkl").read_bytes()
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "2") == 0
    assert "nothing to do: the checkpoint already has 2 of 2 epochs" in capsys.readouterr().out
    assert Path("ck/cnn_last.pkl").read_bytes() == before


# ------------------------------------------------------------------ (b) a non-quiet epoch
def test_non_quiet_epoch_prints_settings_summary_and_progress_bars(cifar_root, capsys, monkeypatch):
    import tqdm.auto

    class EveryStep(tqdm.auto.tqdm):
        """Redraw on every update, so the postfix set at each step is rendered (tqdm otherwise waits 0.1 s)."""

        def __init__(self, *a, **k):
            k.update(mininterval=0, miniters=1)
            super().__init__(*a, **k)
    import cnn_cifar.training.evaluation
    import cnn_cifar.training.hooks
    for module in (cnn_cifar.training.hooks, cnn_cifar.training.evaluation):    # the training and test bars
        monkeypatch.setattr(module, "tqdm", EveryStep)
    assert train(cifar_root, "--cutout", "8", "--label-smoothing", "0.1", quiet=False) == 0
    out, err = capsys.readouterr()
    assert "settings:" not in out                                  # the summary, not one line per flag
    summary = [line for line in out.splitlines() if re.match(r"(model|optimizer|schedule|augment|output) ", line)]
    assert summary == [
        f"model      cnn on cifar10 from {cifar_root} (first 128 train images, first 64 test images), seed 0",
        "optimizer  sgd, lr 0.02, momentum 0.9, weight decay 0.0005; batch 32, 1 epochs",
        "schedule   lr cosine, 10 warm-up epochs; dropout 0.6 (linear_decay)",
        "augment    crop 4, flip, cutout 8; regularisation: label smoothing 0.1",
        "output     checkpoints in ck/, log in log/cnn.log (every setting: --verbose, and the log)"]
    assert re.search(r"^epoch   1/1  train loss \d+\.\d{4} acc +\d+\.\d\d%  test loss \d+\.\d{4} acc +\d+\.\d\d%  "
                     r"lr 0\.\d{6}  dropout 0\.600 +\d+\.\ds", out, re.M), out
    assert "training cnn (" in out and "128 train / 64 test images, 4 steps per epoch" in out
    assert "epoch 1/1:" in err and "test:" in err
    for field in (r"loss=\d+\.\d{4}\b", r"acc=\d+\.\d\d%", r"img_s=\d+\b"):    # the postfix of every step
        assert len(re.findall(field, err)) >= 3, (field, err[-2000:])
    assert "Traceback" not in err


def test_verbose_prints_every_setting_and_the_log_keeps_them_for_each_run(cifar_root, capsys):
    assert train(cifar_root, "--verbose") == 0
    out = capsys.readouterr().out
    assert "settings:" in out and not re.search(r"^optimizer ", out, re.M)
    for k in RESTORED:
        assert re.search(rf"^  {k.replace('_', '-')}\s+\S", out, re.M), k
    assert re.search(r"^  lr\s+0\.02$", out, re.M) and re.search(r"^  batch-size\s+32$", out, re.M)
    assert re.search(r"^  dropout-schedule\s+linear_decay$", out, re.M)
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "2") == 0
    log = Path("log/cnn.log").read_text().splitlines()
    starts = [i for i, line in enumerate(log) if line == "settings:"]
    assert len(starts) == 2 and log[starts[1] - 1].startswith("epoch   1/1")     # one header per run
    assert sum(bool(re.fullmatch(r"  epochs\s+2", line)) for line in log[starts[1]:]) == 1
    assert log[-1].startswith("epoch   2/2")
    for k in RESTORED:
        assert sum(line.split()[0] == k.replace("_", "-") for line in log[1:starts[1] - 1]) == 1, k


def test_quiet_prints_no_table_and_no_bars(cifar_root, capsys):
    assert train(cifar_root) == 0
    out, err = capsys.readouterr()
    assert "settings:" not in out and "model " not in out and "epoch   1/1  train loss" in out
    assert "epoch 1/1:" not in err and "loss=" not in err


# ------------------------------------------------------------------ (c) flags reaching the run
def test_seed_fixes_initial_and_final_weights(cifar_root, monkeypatch):
    inits = []
    real = train_cli.build_model

    def build_model(*a, **k):
        m = real(*a, **k)
        inits.append(weights(m.state_dict()))
        return m
    monkeypatch.setattr(train_cli, "build_model", build_model)
    for ck, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert train(cifar_root, "--seed", seed, "--checkpoint-dir", ck) == 0
    a, b, c = (weights(last(d).state_dict) for d in "abc")
    assert same(inits[0], inits[1]) and not same(inits[0], inits[2])
    assert same(a, b) and not same(a, c)
    assert not same(a, inits[0])                       # it did train
    A, B, C = (last(d) for d in "abc")
    assert (A.args["seed"], C.args["seed"]) == (1, 2)
    for stream in ("data", "dropout"):        # shuffling/augmentation and dropout follow the seed too
        assert A.rng[stream] == B.rng[stream] and A.rng[stream] != C.rng[stream], stream


def test_adam_and_its_betas(cifar_root):
    assert train(cifar_root, "--optimizer", "adam", "--lr", "0.001", "--beta1", "0.8", "--beta2", "0.99",
                 "--weight-decay", "0") == 0
    ck = last()
    assert ck.optimizer["type"] == "Adam"
    assert ck.optimizer["hyper"]["betas"] == [0.8, 0.99] and ck.optimizer["hyper"]["weight_decay"] == 0.0
    assert set(ck.optimizer["state"]) == {"m", "v"} and ck.optimizer["steps"] == 4
    assert (ck.args["optimizer"], ck.args["beta1"], ck.args["beta2"]) == ("adam", 0.8, 0.99)


@pytest.mark.parametrize("model,flags,hyper", [
    ("cnn", [], {"momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}),
    ("cnn", ["--momentum", "0.5", "--nesterov", "--weight-decay", "0.001"],
     {"momentum": 0.5, "nesterov": True, "weight_decay": 0.001}),
    ("resnet8", [], {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    ("resnet8", ["--no-nesterov", "--weight-decay", "0"], {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0}),
    # no momentum: no Nesterov
    ("resnet8", ["--momentum", "0"], {"momentum": 0.0, "nesterov": False, "weight_decay": 5e-4}),
])
def test_sgd_flags_reach_the_optimizer(cifar_root, model, flags, hyper):
    assert train(cifar_root, "--model", model, *flags) == 0
    ck = last(model=model)
    assert ck.optimizer["type"] == "SGD" and ck.optimizer["hyper"] == hyper


def test_label_smoothing_reaches_the_loss(cifar_root):
    from cnn_cifar.data import BatchLoader, load_dataset
    from cnn_cifar.models import build_model
    from cnn_cifar.training import evaluate
    assert train(cifar_root, "--checkpoint-dir", "plain") == 0
    assert train(cifar_root, "--label-smoothing", "0.3", "--checkpoint-dir", "smooth") == 0
    plain, smooth = last("plain"), last("smooth")
    assert (plain.args["label_smoothing"], smooth.args["label_smoothing"]) == (0.0, 0.3)
    assert smooth.history[0]["train_loss"] != plain.history[0]["train_loss"]
    # the recorded test loss is the smoothed loss of the saved model on the first 64 test images
    ds = load_dataset("cifar10", cifar_root, download=False)
    net = build_model("cnn")
    net.load_state_dict(smooth.state_dict)
    loader = BatchLoader(ds.x_test[:64], ds.y_test[:64], 64, CIFAR10.mean, CIFAR10.std, prefetch=False)
    assert evaluate(net, loader, nn.SoftmaxCrossEntropy(0.3), 10)["loss"] == \
        pytest.approx(smooth.history[0]["test_loss"], rel=1e-5)
    assert evaluate(net, loader, nn.SoftmaxCrossEntropy(0.0), 10)["loss"] != \
        pytest.approx(smooth.history[0]["test_loss"], rel=1e-3)


def test_min_lr_is_the_floor_of_the_schedule(cifar_root):
    assert train(cifar_root, "--lr", "0.02", "--min-lr", "0.005", "--warmup-epochs", "0",
                 "--lr-schedule", "cosine") == 0
    ck = last()
    assert ck.args["min_lr"] == 0.005 and ck.schedule["lr"]["min_lr"] == 0.005
    assert ck.history[0]["lr"] == pytest.approx(0.005, rel=1e-12)      # the end of a 1-epoch cosine


@pytest.mark.parametrize("flags,msg", [(["--min-lr", "0.5", "--lr", "0.1"], "--min-lr 0.5 is above --lr 0.1"),
                                       (["--min-lr", "0.03"], "--min-lr 0.03 is above --lr 0.02")])
def test_min_lr_above_lr_is_an_argparse_error(cifar_root, capsys, flags, msg):
    with pytest.raises(SystemExit) as exc:
        train(cifar_root, *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"train_cli.py: error: {msg}"
    assert not Path("ck").exists()


@pytest.mark.parametrize("flags,cfg", [([], (4, True, 0)), (["--crop-padding", "2", "--no-flip"], (2, False, 0)),
                                       (["--cutout", "8"], (4, True, 8)),
                                       (["--no-augment", "--cutout", "8", "--crop-padding", "2"], (0, False, 0))])
def test_augmentation_flags_reach_the_loader(cifar_root, loaders, flags, cfg):
    assert train(cifar_root, *flags) == 0
    tr, te = loaders
    a = tr.augment_cfg
    assert (a.crop_padding, a.flip, a.cutout) == cfg
    assert tr.shuffle and not te.shuffle
    assert (te.augment_cfg.crop_padding, te.augment_cfg.flip, te.augment_cfg.cutout) == (0, False, 0)
    args = last().args
    assert args["no_augment"] == ("--no-augment" in flags) and args["no_flip"] == ("--no-flip" in flags)
    assert args["crop_padding"] == (2 if "--crop-padding" in flags else 4)


def test_no_augment_behaves_like_no_crop_and_no_flip(cifar_root):
    assert train(cifar_root, "--checkpoint-dir", "default") == 0
    assert train(cifar_root, "--no-augment", "--checkpoint-dir", "none") == 0
    assert train(cifar_root, "--crop-padding", "0", "--no-flip", "--checkpoint-dir", "off") == 0
    d, n, o = (weights(last(x).state_dict) for x in ("default", "none", "off"))
    assert same(n, o) and not same(n, d)


def test_no_prefetch_reaches_both_loaders_and_changes_nothing_else(cifar_root, loaders):
    assert train(cifar_root, "--checkpoint-dir", "serial") == 0               # BASE has --no-prefetch
    argv = [a for a in BASE if a != "--no-prefetch"]
    assert train_cli.main(["--data", str(cifar_root), *argv, "--quiet", "--checkpoint-dir", "threaded"]) == 0
    assert [ld.prefetch for ld in loaders] == [False, False, True, True]
    assert same(weights(last("serial").state_dict), weights(last("threaded").state_dict))


@pytest.mark.parametrize("n_train,n_test,bs,steps", [(100, 50, 32, 3), (20, 64, 32, 1)])
def test_limit_train_and_limit_test(cifar_root, loaders, capsys, n_train, n_test, bs, steps):
    assert train(cifar_root, "--limit-train", str(n_train), "--limit-test", str(n_test)) == 0
    assert f"{n_train} train / {n_test} test images, {steps} steps per epoch" in capsys.readouterr().out
    tr, te = loaders
    assert (len(tr.x), len(te.x), tr.batch_size) == (n_train, n_test, min(bs, n_train))
    ck = last()
    assert ck.optimizer["steps"] == steps and (ck.args["limit_train"], ck.args["limit_test"]) == (n_train, n_test)
    assert test_cli.main(["--resume", "ck/cnn_last.pkl", "--data", str(cifar_root), "--no-download", "--quiet",
                          "--limit-test", str(n_test), "--json", "r.json"]) == 0
    res = json.loads(Path("r.json").read_text())
    assert res["n"] == n_test and res["accuracy"] == ck.history[0]["test_acc"]


def test_one_training_image_is_refused(cifar_root, capsys):
    assert train(cifar_root, "--limit-train", "1") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: need at least 2 training images, have 1"


def test_test_cli_batch_size_does_not_change_the_result(cifar_root, loaders):
    assert train(cifar_root) == 0
    res = []
    for bs in ("7", "64"):
        assert test_cli.main(["--resume", "ck/cnn_last.pkl", "--data", str(cifar_root), "--no-download", "--quiet",
                              "--limit-test", "64", "--batch-size", bs, "--json", f"r{bs}.json"]) == 0
        res.append(json.loads(Path(f"r{bs}.json").read_text()))
    a, b = res
    assert [ld.batch_size for ld in loaders[2:]] == [7, 64]                # the flag reached the loader
    assert a["n"] == b["n"] == 64
    assert a["accuracy"] == b["accuracy"] == last().history[0]["test_acc"]
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["topk"] == b["topk"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_train_plot_flag(cifar_root, tmp_path):
    assert train(cifar_root) == 0
    assert not (tmp_path / "viz").exists()                                 # no --plot: no figures
    assert train(cifar_root, "--plot", "--checkpoint-dir", "ck2") == 0
    assert sorted(p.name for p in (tmp_path / "viz" / "cnn").iterdir()) == ["cnn_training_progress.png"]


def test_test_cli_plot_and_out(cifar_root, tmp_path):
    assert train(cifar_root) == 0
    argv = ["--resume", "ck/cnn_best.pkl", "--data", str(cifar_root), "--no-download", "--quiet", "--limit-test", "64",
            "--plot"]
    assert test_cli.main([*argv, "--out", "figs"]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["cnn_confusion_matrix.png",
                                                                     "cnn_per_class_accuracy.png"]
    assert not (tmp_path / "viz" / "cnn" / "cnn_confusion_matrix.png").exists()
    assert test_cli.main(argv) == 0                                         # without --out: viz/<model>
    assert (tmp_path / "viz" / "cnn" / "cnn_confusion_matrix.png").is_file()


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_stretches_to_a_new_epochs_on_resume(cifar_root, monkeypatch, capsys, kind):
    """Train 2 of 4 epochs (a real SIGINT after epoch 2's files are written), resume with --epochs 6: from
    epoch 3 on, the lr follows the 6-epoch schedule."""
    import cnn_cifar.training.hooks as trainer_mod  # where the history is written each epoch
    real = trainer_mod.write_history

    def write_then_ctrl_c(d, model, rows):
        out = real(d, model, rows)
        if len(rows) == 2:
            signal.raise_signal(signal.SIGINT)      # handled by the CLI's guard: stop after this epoch
        return out
    monkeypatch.setattr(trainer_mod, "write_history", write_then_ctrl_c)
    flags = ["--lr-schedule", kind, "--lr", "0.05", "--min-lr", "0.001", "--warmup-epochs", "1",
             "--dropout-schedule", "none", "--limit-train", "64", "--limit-test", "32"]     # 2 steps an epoch
    assert train(cifar_root, *flags, "--epochs", "4") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("stopped: interrupted at epoch 3, step 0;")
    monkeypatch.setattr(trainer_mod, "write_history", real)
    ck = last()
    assert ck.epoch == 2 and ck.schedule["lr"]["total_epochs"] == 4
    assert train(cifar_root, "--resume", "ck/cnn_last.pkl", "--epochs", "6") == 0
    ck = last()
    s4, s6 = (LRSchedule(kind, 0.05, n, 1.0, 0.001) for n in (4, 6))
    lrs = [r["lr"] for r in ck.history]
    assert len(lrs) == 6 and ck.schedule["lr"]["total_epochs"] == 6 and ck.args["epochs"] == 6
    assert lrs[:2] == pytest.approx([s4(1.0), s4(2.0)], rel=1e-12)
    assert lrs[2:] == pytest.approx([s6(3.0), s6(4.0), s6(5.0), s6(6.0)], rel=1e-12)
    assert abs(s6(3.0) - s4(3.0)) > 0.005                                    # the two schedules differ there
    assert lrs[-1] == pytest.approx(0.001, rel=1e-12)                        # ends at --min-lr


def test_nesterov_without_momentum():
    """A recipe's Nesterov is dropped with --momentum 0 (and recorded so); asking for both is an error."""
    eff = resolve(parse("--model", "resnet20", "--momentum", "0"))
    assert (eff["momentum"], eff["nesterov"]) == (0.0, False)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--momentum", "0", "--nesterov", "--epochs", "1"])
    assert exc.value.code == 2


def test_help_shows_each_registered_recipe_value():
    text = " ".join(train_cli.build_parser().format_help().split()).replace("net- ", "net-")   # (wrapped at a hyphen)
    assert ("peak learning rate [cnn: 0.02; resnet8/14/20/32/44/56/110/cifarnet: 0.1; net-basic: 0.001; "
            f"net-dilated: 0.01; senet: 0.2; airbench94: {recipe('airbench94').lr}]") in text
    assert ("initial rate [cnn: 0.6; resnet8/14/20/32/44/56/110/senet/airbench94: 0.0; net-basic: 0.5; "
            "net-dilated/cifarnet: 0.05]") in text
    assert "parameters for 10 classes: cnn 232,314, resnet8 78,042" in text and "senet 330,794" in text


def _help_default(help_text: str, model: str) -> str:
    """The default a help text shows for ``model``: its trailing [v] or [names: v; names: v] group."""
    groups = re.search(r"\[([^\[\]]*)\]$", help_text)[1].split("; ")
    if len(groups) == 1 and ": " not in groups[0]:
        return groups[0]
    for group in groups:
        names, value = group.split(": ")
        expanded, family = [], ""
        for n in names.split("/"):                    # "resnet8/14" is resnet8 and resnet14
            expanded.append(family + n if n.isdigit() else n)
            family = re.match(r"[a-z_-]*", expanded[-1])[0]
        if model in expanded:
            return value
    raise AssertionError(f"{model} not in {help_text!r}")


# Defaults a help text describes in words: the model's lists every model, the backend's names its variable,
# lr-decay-steps's is computed from the run, max-lr's is --lr, lr-points' None is the schedule's default
# triangle (shown as its points), and "off" stands for None.
DESCRIBED_DEFAULTS = ("model", "backend", "lr_decay_steps", "max_lr", "lr_points", "shift_scale_rotate",
                      "color_jitter", "freeze_after")


def test_every_default_in_the_help_is_the_one_a_run_gets():
    """For every flag whose help shows a default, and every model, the shown value is what resolve() gives
    when the flag is left out: defaults have one home (the recipes, RunConfig), the help reads them."""
    parser = train_cli.build_parser()
    shown = {a.dest: a.help for a in parser._actions
             if a.help and re.search(r"\[[^\[\]]*\]$", a.help) and a.dest in FIELDS}
    assert {"lr", "label_smoothing", "beta1", "cutout_p", "ema_bn_batches", "seed", "data", "checkpoint_dir",
            "tensorboard_every", "save_every"} <= set(shown)
    for name in list_models():
        cfg = resolve(parse("--model", name))
        for dest, text in shown.items():
            if dest in DESCRIBED_DEFAULTS:
                continue
            assert _help_default(text, name) == str(cfg[dest]), (name, dest, text)


def test_amp_is_a_recipe_setting_a_flag_can_turn_off():
    assert resolve(parse("--model", "cifarnet"))["amp"] is True                  # 004's recipe trains with AMP
    assert resolve(parse("--model", "cifarnet", "--no-amp"))["amp"] is False
    assert resolve(parse("--model", "resnet32", "--amp"))["amp"] is True
    assert resolve(parse("--model", "resnet32"))["amp"] is False
