"""Evaluation features: test_cli --tta flip, and --summary on both CLIs (torchsummary-style table)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import test as test_cli
from cnn_cifar.cli import train as train_cli
from cnn_cifar.cli.summary import layer_rows
from cnn_cifar.data import BatchLoader, load_dataset
from cnn_cifar.models import build_model
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.tta import FlipTTA, with_tta

BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]


@pytest.fixture(autouse=True)
def _in_tmp(cli_tmp):
    """Every run here works in tmp_path on NumPy (see conftest.cli_tmp)."""


def test_flip_tta_averages_the_logits_of_image_and_mirror(xp):
    model = build_model("cnn", seed=3).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with nn.no_grad():
        plain = backend.to_numpy(model(xp.asarray(x))).copy()
        mirrored = backend.to_numpy(model(xp.asarray(np.ascontiguousarray(x[..., ::-1])))).copy()
        both = backend.to_numpy(with_tta(model, "flip")(xp.asarray(x)))
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, mirrored)                         # the mirror really is another input
    assert with_tta(model, None) is model
    wrapped = FlipTTA(model)
    wrapped.train()
    assert model.training                                          # modes reach the wrapped model
    wrapped.eval()
    assert not model.training


def test_flip_translate_tta_averages_the_six_views_as_the_fast_recipes_do(xp):
    """Half the mirror-averaged logits, half the mean of the mirror-averaged logits of the image translated
    one pixel down-right and up-left (crops of the reflect-padded image), written out view by view here."""
    model = build_model("cnn", seed=3).eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    assert np.array_equal(padded[:, :, 0, 1:33], x[:, :, 1])       # reflect: the edge row is not repeated

    def mirrored_mean(v):
        with nn.no_grad():
            a = backend.to_numpy(model(xp.asarray(np.ascontiguousarray(v)))).astype(np.float64)
            b = backend.to_numpy(model(xp.asarray(np.ascontiguousarray(v[..., ::-1])))).astype(np.float64)
        return (a + b) / 2
    want = 0.5 * mirrored_mean(x) + 0.25 * (mirrored_mean(padded[:, :, :32, :32]) + mirrored_mean(padded[:, :, 2:, 2:]))
    with nn.no_grad():
        got = backend.to_numpy(with_tta(model, "flip-translate")(xp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want, mirrored_mean(x), rtol=1e-3)       # the translated views count


def test_test_cli_tta_flip(cifar_root):
    assert train_cli.main(["--data", str(cifar_root), *BASE]) == 0
    argv = ["--resume", "ck/cnn_last.pkl", "--data", str(cifar_root), "--no-download", "--quiet", "--limit-test", "64"]
    assert test_cli.main([*argv, "--tta", "flip", "--json", "tta.json"]) == 0
    res = json.loads(Path("tta.json").read_text())
    # by hand: the saved model on the images and on their mirror images (flipped before normalising)
    ck = load_checkpoint("ck/cnn_last.pkl")
    net = build_model("cnn")
    net.load_state_dict(ck.state_dict)
    net.eval()
    ds = load_dataset("cifar10", cifar_root, download=False)
    x, y = ds.x_test[:64], ds.y_test[:64]
    mean, std = ck.normalization(ds.spec.mean, ds.spec.std)
    with nn.no_grad():
        logits = [np.concatenate([backend.to_numpy(net(xb)).copy() for xb, _ in
                                  BatchLoader(imgs, y, 64, mean, std, prefetch=False)])
                  for imgs in (x, np.ascontiguousarray(x[..., ::-1]))]
    pred = ((logits[0] + logits[1]) / 2).argmax(axis=1)
    assert res["tta"] == "flip" and res["n"] == 64
    assert res["accuracy"] == pytest.approx((pred == y).mean(), abs=1e-12)
    assert res["confusion_matrix"][0][0] == int(((pred == 0) & (y == 0)).sum())


# SimpleCNN by hand: conv 3->8 3x3 on 32x32 -> 8x30x30, 224 parameters, 8*30*30*27 multiply-adds; the
# linear layers in*out each; ResNet-32's total from torch 2.13.0 (shared/reference/torch_twin.py ResNet32,
# forward hooks on every Conv2d and Linear: output elements x weights per output), 69,124,736.
def test_layer_rows_by_hand_and_the_resnet32_total_from_torch():
    model = build_model("cnn")
    model.train()
    rows = layer_rows(model)
    assert [(r["name"], r["output"], r["params"], r["macs"]) for r in rows] == [
        ("conv1", (1, 8, 30, 30), 224, 194_400), ("bn1", (1, 8, 30, 30), 16, 0), ("relu1", (1, 8, 30, 30), 0, 0),
        ("pool", (1, 8, 15, 15), 0, 0), ("flatten", (1, 1800), 0, 0), ("fc1", (1, 128), 230_528, 230_400),
        ("bn2", (1, 128), 256, 0), ("relu2", (1, 128), 0, 0), ("dropout", (1, 128), 0, 0),
        ("fc2", (1, 10), 1_290, 1_280)]
    assert model.training and all("forward" not in m.__dict__ for m in model.modules())    # left as it was
    r32 = layer_rows(build_model("resnet32"))
    assert sum(r["macs"] for r in r32) == 69_124_736 and sum(r["params"] for r in r32) == 466_906


def test_summary_on_both_clis(cifar_root, capsys):
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--summary"]) == 0
    out = capsys.readouterr().out
    assert not Path("ck").exists()                                  # printed and exited
    assert re.search(r"^conv1 \(Conv2d\) +\[-1, 8, 30, 30\] +224 +194,400$", out, re.M)
    assert re.search(r"^fc1 \(Linear\) +\[-1, 128\] +230,528 +230,400$", out, re.M)
    assert "Total params: 232,314" in out and "Mult-adds per image: 426,080 (0.43 M)" in out
    assert train_cli.main(["--data", str(cifar_root), *BASE]) == 0
    capsys.readouterr()
    assert test_cli.main(["--resume", "ck/cnn_best.pkl", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "\ncnn from ck/cnn_best.pkl:\n" in out and "Total params: 232,314" in out


def test_amp_on_numpy_says_so_and_trains_in_float32(cifar_root, capsys):
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--checkpoint-dir", "plain"]) == 0
    capsys.readouterr()
    assert train_cli.main(["--data", str(cifar_root), *BASE, "--amp", "--checkpoint-dir", "amp"]) == 0
    out = capsys.readouterr().out
    assert "--amp: mixed precision needs the CuPy backend; training in float32\n" in out
    a, b = (load_checkpoint(f"{d}/cnn_last.pkl").state_dict for d in ("plain", "amp"))
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    assert a["conv1.weight"].dtype == np.float32
