"""airbench94: the network (count, frozen parts, initialisation), its recipe's arithmetic and pieces (parameter
groups, frozen parameters, fractional epochs, summed loss, final TTA), trained end to end through train_cli."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import train as train_cli
from cnn_cifar.models import build_model, recipe
from cnn_cifar.models.airbench import conv_group
from cnn_cifar.models.registry import skip_input_gradient
from cnn_cifar.training import load_checkpoint
from cnn_cifar.training.config import resolve

from conftest import one_line_error, train_args
from gradcheck import check_module


def test_parameter_count_and_what_is_frozen():
    """1,972,792 parameters for 10 classes, counted as PyTorch does (frozen ones included); the whitening
    weight and every batch norm's weight do not train."""
    model = build_model("airbench94")
    assert model.num_parameters() == 1_972_792
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen[0] == "group1.2.weight" and "whiten.weight" in frozen and len(frozen) == 7
    assert all(name.endswith(".weight") for name in frozen)
    assert build_model("airbench94", num_classes=100).num_parameters() == 1_972_792 + 90 * 256
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6 and all((m.eps, m.momentum) == (1e-12, 0.4) for m in bns)


def test_convolutions_start_as_the_identity_on_their_first_channels():
    model = build_model("airbench94", seed=3)
    conv = model.group2[0]                                          # 64 -> 256
    w = backend.to_numpy(conv.weight.data)
    eye = np.zeros((64, 64, 3, 3), np.float32)
    eye[np.arange(64), np.arange(64), 1, 1] = 1
    np.testing.assert_array_equal(w[:64], eye)
    assert np.abs(w[64:]).max() > 0 and np.abs(w[64:]).max() <= 1 / math.sqrt(64 * 9)    # PyTorch's default rest


def test_whitening_layer_is_set_from_the_images(xp):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    model = build_model("airbench94")
    model.init_from_data(images)
    np.testing.assert_array_equal(backend.to_numpy(model.whiten.weight.data),
                                  nn.init.whitening(images, (2, 2), 5e-4))
    assert model.init_images == 5000


def test_forward_shape_and_logit_scale():
    """(N, 3, 32, 32) -> (N, classes): the logits are the bias-free head's output over 9."""
    model = build_model("airbench94", num_classes=10).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with nn.no_grad():
        logits = model(x)
        feats = x
        for m in model._order[:-2]:
            feats = m(feats)
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, feats @ model.fc.weight.data.T / 9, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_conv_group_gradients_match_finite_differences(training):
    """The group (conv, max-pool, BN with its weight fixed, GELU, conv, BN, GELU) in float64."""
    group = conv_group(3, 5, np.random.default_rng(0), np.float64)
    group.train(training)
    if not training:
        for m in group.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean[...] = 0.1
                m.running_var[...] = 1.5
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 6))
    check_module(group, x, max_points=60)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5, 5)])
def test_mul_gradient_matches_finite_differences(xp, shape):
    x = np.random.default_rng(2).standard_normal(shape)
    check_module(nn.Mul(1 / 9), backend.to_device(x) if xp is not np else x)


# ------------------------------------------------------------------ the recipe
def test_recipe_arithmetic_is_the_papers_per_1024_examples():
    """lr 11.5 and weight decay 0.0153 per 1024 examples with the momentum's gain divided out: with
    s = 1024 (1 + 1/(1 - 0.85)), lr = 11.5/s and lr * weight_decay = 0.0153 * batch / s; the batch norms' group
    at 64 x lr has the same decay per step."""
    r = recipe("airbench94")
    s = 1024 * (1 + 1 / (1 - 0.85))
    assert (r.batch_size, r.momentum, r.nesterov, r.epochs) == (1024, 0.85, True, 9.9)
    assert r.lr == pytest.approx(11.5 / s, rel=1e-12)
    assert r.lr * r.weight_decay == pytest.approx(0.0153 * 1024 / s, rel=1e-12)
    assert (r.label_smoothing, r.loss_reduction, r.lookahead_period, r.tta) == (0.2, "sum", 5, "flip-translate")
    assert (r.lr_schedule, r.translate, r.crop_padding, r.alternating_flip) == ("piecewise", 2, 0, True)
    cfg = resolve({"model": "airbench94"})
    model = build_model("airbench94")
    opt = cfg.build_optimizer(model)
    norm, other = opt.param_groups
    assert norm["lr"] == pytest.approx(64 * r.lr) and other["lr"] == r.lr
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"], rel=1e-12)
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in norm["params"]} == bn_params and len(other["params"]) == 9
    assert len(opt.params) == len(list(model.parameters()))


def test_one_parameter_group_unless_the_batch_norms_get_their_own():
    model = build_model("cnn")
    assert len(resolve({"model": "cnn"}).build_optimizer(model).param_groups) == 1
    two = resolve({"model": "cnn", "bn_lr_scale": 8.0}).build_optimizer(model).param_groups
    assert [len(g["params"]) for g in two] == [4, 6] and two[0]["lr"] == 8 * two[1]["lr"]


# ------------------------------------------------------------------ through train_cli
def _history(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_fractional_run_freezes_on_time_and_ends_with_its_tta(inproc, tmp_path, cifar_root):
    """2.5 epochs of 4 steps: 10 steps (the last epoch has 2); the lr schedule ends on the last step; the
    whitening bias trains in epoch 1 only (--freeze-after whiten.bias=1), the frozen weights never; the run
    ends with the flip-translate evaluation and the time-to-result line, in the log too."""
    args = ["--model", "airbench94", "--data", str(cifar_root), "--no-download", "--checkpoint-dir", "ck", "--log-dir",
            "log", "--quiet", "--limit-train", "64", "--limit-test", "32", "--batch-size", "16", "--no-prefetch",
            "--epochs", "2.5", "--freeze-after", "whiten.bias=1", "--save-every", "1"]
    p = inproc(train_cli.main, *args)
    assert p.returncode == 0, p.stderr
    assert "final weights with flip-translate test-time augmentation" in p.stdout
    assert "time to result" in p.stdout and "initialisation" in p.stdout
    assert "final weights with flip-translate" in (tmp_path / "log" / "airbench94.log").read_text()
    last = load_checkpoint(tmp_path / "ck" / "airbench94_last.pkl", "airbench94")
    assert last.epoch == 3 and last.optimizer["steps"] == 10
    hist = _history(tmp_path / "ck" / "airbench94_history.jsonl")
    assert len(hist) == 3 and hist[-1]["lr"] == pytest.approx(0.07 * recipe("airbench94").lr, rel=1e-9)
    e1 = load_checkpoint(tmp_path / "ck" / "airbench94_epoch1.pkl", "airbench94").state_dict
    e2 = load_checkpoint(tmp_path / "ck" / "airbench94_epoch2.pkl", "airbench94").state_dict
    fresh = build_model("airbench94").state_dict()
    assert not np.array_equal(e1["whiten.bias"], fresh["whiten.bias"])                # trained in epoch 1
    # Frozen from epoch 2 on: lookahead's pull at step 5 still moves it toward what epoch 1 made of it, then
    # nothing does (steps 6-10 leave it, so the pull at step 10 and the final one find it where it is).
    np.testing.assert_array_equal(last.state_dict["whiten.bias"], e2["whiten.bias"])
    assert not np.array_equal(last.state_dict["group1.0.weight"], e2["group1.0.weight"])    # the rest trains
    for name in ("whiten.weight", "group1.2.weight", "group3.5.weight"):                     # frozen throughout
        np.testing.assert_array_equal(last.state_dict[name], e1[name])
    np.testing.assert_array_equal(e1["group1.2.weight"], fresh["group1.2.weight"])
    assert not np.array_equal(e1["whiten.weight"], fresh["whiten.weight"])          # set from the images


@pytest.mark.parametrize("flags,pattern", [
    (["--tta", "mirror"], r"argument --tta: invalid choice: 'mirror'"),
    (["--lookahead-period", "0"], r"argument --lookahead-period: must be a positive integer, got 0"),
    (["--freeze-after", "conv1.bias"], r"--freeze-after takes NAME=EPOCHS"),
    (["--freeze-after", "conv1.bias=-1"], r"--freeze-after takes NAME=EPOCHS"),
    (["--lr-schedule", "piecewise", "--lr-points", "0", "1", "0.5", "2", "0.4", "0"], r"lr-points"),
    (["--bn-lr-scale", "0"], r"argument --bn-lr-scale: must be a positive number, got 0"),
    (["--loss-reduction", "max"], r"argument --loss-reduction: invalid choice"),
])
def test_recipe_flags_that_make_no_sense_are_one_line_errors(inproc, tmp_path, cifar_root, flags, pattern):
    p = inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1", *flags))
    one_line_error(p, 2, pattern)
    assert not (tmp_path / "ck").exists()


def test_a_parameter_the_model_lacks_is_named_before_anything_is_written(inproc, tmp_path, cifar_root):
    p = inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1", "--freeze-after", "whiten.bias=3"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "freeze-after names whiten.bias, which cnn does not have" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ck").exists()


def test_a_summed_loss_is_reported_per_image(inproc, tmp_path, cifar_root):
    """--loss-reduction sum changes the gradients' scale, not the figures: losses are per image either way."""
    for reduction in ("mean", "sum"):
        p = inproc(train_cli.main, *train_args(cifar_root, "--epochs", "1", "--loss-reduction", reduction,
                                               "--lr", "1e-9", "--checkpoint-dir", f"ck_{reduction}"))
        assert p.returncode == 0, p.stderr
    mean, summed = (_history(tmp_path / f"ck_{r}" / "cnn_history.jsonl")[0] for r in ("mean", "sum"))
    assert summed["test_loss"] == pytest.approx(mean["test_loss"], rel=1e-5)
    assert summed["train_loss"] == pytest.approx(mean["train_loss"], rel=1e-4)
    assert 1.0 < summed["train_loss"] < 5.0


def test_the_pytorch_twin_imports_nothing_of_ours():
    """benchmarks/airbench_torch.py is written from the same description, not from our code: it imports
    torch, NumPy and the standard library only, and puts nothing of this project on its path."""
    import ast
    from pathlib import Path
    source = (Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_torch.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "json", "math", "pickle", "time", "pathlib", "numpy", "torch"}
    assert "cnn_cifar" not in source and "sys.path" not in source and "src" not in imported


def test_a_training_step_runs_on_both_backends_alike(xp):
    """One step of the recipe's optimizer (two groups, frozen parameters, summed smoothed loss) on NumPy and on
    CuPy (real, or the stand-in): the same loss and the same updated weights."""
    from cnn_cifar.training import train_step
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    cfg = resolve({"model": "airbench94"})
    results, target = [], backend.name
    for name in ("numpy", target):
        backend.set_backend(name)
        model = build_model("airbench94", seed=1)
        model.init_from_data(x)
        opt = cfg.build_optimizer(model)
        loss, _ = train_step(model, cfg.make_criterion(), opt, backend.to_device(x), backend.to_device(y))
        results.append((loss, {k: backend.to_numpy(v) for k, v in model.state_dict().items()}))
    (l0, w0), (l1, w1) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in w0:
        np.testing.assert_allclose(w1[k], w0[k], rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(w1["whiten.weight"], w0["whiten.weight"])


def test_layers_behind_the_frozen_whitening_skip_their_input_gradient(xp):
    """Once the whitening bias is frozen (FreezeParameters calls skip_input_gradient), the first conv group
    skips its input's gradient and the whitening layer its backward, as PyTorch's autograd would: the same
    gradients for everything that trains, none for the frozen layer, on both backends."""
    x = backend.to_device(np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32))
    grads = []
    for prune in (False, True):
        model = build_model("airbench94", seed=1)
        model.whiten.bias.requires_grad = False
        skip_input_gradient(model)
        first = model.group1[0]
        assert first.needs_input_grad is False and model.group1[4].needs_input_grad is True
        if not prune:
            first.needs_input_grad = True                       # the whole chain, for comparison
        out = model(x)
        assert model.backward(backend.xp.ones_like(out)) is None
        grads.append({k: backend.to_numpy(p.grad).copy() for k, p in model.named_parameters()})
    full, pruned = grads
    assert not full["whiten.bias"].any() and not pruned["whiten.bias"].any()
    assert not pruned["whiten.weight"].any() and not full["whiten.weight"].any()     # frozen: no gradient
    for k, p in model.named_parameters():
        if p.requires_grad:          # the conv's weight gradient comes another way without dx: last bits differ
            np.testing.assert_allclose(pruned[k], full[k], rtol=1e-4, atol=1e-6 * np.abs(full[k]).max(), err_msg=k)
