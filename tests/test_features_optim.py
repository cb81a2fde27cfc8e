"""AdamW, gradient clipping and the weights' moving average (EMA): against torch 2.13.0's numbers, on both
backends, through the trainer (exact resume, also mid-epoch) and through train_cli."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.cli import train as train_cli
from cnn_cifar.data import AugmentConfig, BatchLoader, load_dataset
from cnn_cifar.data.datasets import CIFAR10
from cnn_cifar.errors import SettingError
from cnn_cifar.models import build_model
from cnn_cifar.optim import SGD, AdamW, DropoutSchedule, LRSchedule, clip_grad_norm_, grad_norm
from cnn_cifar.training import (
    Learner,
    Loaders,
    LoopOptions,
    NonFiniteLoss,
    RunOutput,
    Schedules,
    Trainer,
    TrainingInterrupted,
    evaluate_checkpoint,
    load_checkpoint,
    train_step,
)
from cnn_cifar.training.config import resolve
from cnn_cifar.training.ema import ModelEMA, update_bn

from test_training import StopAfter

BASE = ["--no-download", "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "32",
        "--no-prefetch", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet"]


# ------------------------------------------------------------------ AdamW
def test_adamw_matches_torch(xp):
    """torch 2.13.0: AdamW([w], lr, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1), float64, three steps at
    lr 0.01, 0.02, 0.005 with gradients [0.2, -0.4, 0.1 t]."""
    p = nn.Parameter(xp.asarray([0.5, -1.5, 2.0], dtype=np.float64))
    opt = AdamW([p], lr=0.01, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1)
    for t, lr in enumerate([0.01, 0.02, 0.005]):
        opt.lr = lr
        p.grad[...] = xp.asarray([0.2, -0.4, 0.1 * t], dtype=np.float64)
        opt.step()
    np.testing.assert_allclose(backend.to_numpy(p.data), [0.4632867412482504, -1.459790239374125, 1.9734320271684176],
                               rtol=1e-14)
    assert AdamW([nn.Parameter(xp.zeros(1))]).weight_decay == 0.01      # torch.optim.AdamW's default
    assert opt.state_dict()["type"] == "AdamW"


def test_adamw_weight_decay_default_is_pytorchs_unless_given():
    parse = train_cli.build_parser().parse_args
    assert resolve(vars(parse(["--optimizer", "adamw"]))).weight_decay == 0.01
    assert resolve(vars(parse(["--optimizer", "adamw", "--weight-decay", "5e-4"]))).weight_decay == 5e-4
    assert resolve(vars(parse(["--optimizer", "adam"]))).weight_decay == 5e-4            # the recipe's L2
    assert resolve(vars(parse([])), {"optimizer": "adamw", "weight_decay": 0.0}).weight_decay == 0.0   # resumed


# ------------------------------------------------------------------ clip_grad_norm_
# torch 2.13.0: clip_grad_norm_([a, b], max_norm) on these float32 gradients.
GRAD_A = [[0.3, -1.2, 0.5], [2.0, 0.0, -0.7]]
GRAD_B = [1.5, -0.25, 0.8, 0.1]
TORCH_NORM = 3.0385031700134277
TORCH_CLIPPED_A = [[0.09873279929161072, -0.39493119716644287, 0.1645546555519104],
                   [0.6582186222076416, 0.0, -0.23037651181221008]]
TORCH_CLIPPED_B = [0.4936639666557312, -0.0822773277759552, 0.2632874548435211, 0.03291093185544014]


def test_clip_grad_norm_matches_torch(xp):
    a = nn.Parameter(xp.zeros((2, 3), dtype=np.float32))
    b = nn.Parameter(xp.zeros(4, dtype=np.float32))
    a.grad[...] = xp.asarray(GRAD_A, dtype=np.float32)
    b.grad[...] = xp.asarray(GRAD_B, dtype=np.float32)
    assert clip_grad_norm_([a, b], 5.0) == pytest.approx(TORCH_NORM, rel=1e-6)         # below max: unchanged
    np.testing.assert_array_equal(backend.to_numpy(a.grad), np.asarray(GRAD_A, np.float32))
    assert clip_grad_norm_([a, b], 1.0) == pytest.approx(TORCH_NORM, rel=1e-6)
    np.testing.assert_allclose(backend.to_numpy(a.grad), TORCH_CLIPPED_A, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(b.grad), TORCH_CLIPPED_B, rtol=1e-6)
    assert a.grad.dtype == np.float32 and grad_norm([a, b]) == pytest.approx(1.0 / (1 + 1e-6 / TORCH_NORM), rel=1e-6)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm_([a], 0.0)


def _tiny():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, rng=rng), nn.BatchNorm1d(5), nn.ReLU(),
                          nn.Linear(5, 3, rng=rng))
    x = np.random.default_rng(0).standard_normal((8, 3, 2, 2)).astype(np.float32)
    y = np.arange(8) % 3
    return model, x, y


def test_train_step_clips_between_backward_and_update():
    model, x, y = _tiny()
    ref, _, _ = _tiny()
    for m in (model, ref):
        m.train()
    w0 = [p.data.copy() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=0.5, momentum=0.0)
    train_step(ref, nn.SoftmaxCrossEntropy(), SGD(ref.parameters(), lr=0.5, momentum=0.0), x, y)
    unclipped = grad_norm(ref.parameters())
    assert unclipped > 0.05
    train_step(model, nn.SoftmaxCrossEntropy(), opt, x, y, clip_grad_norm=0.05)
    grads = [p.grad for p in model.parameters()]
    assert grad_norm(model.parameters()) == pytest.approx(0.05, rel=1e-5)
    for g, gr in zip(grads, (p.grad for p in ref.parameters())):          # same direction, scaled down
        np.testing.assert_allclose(g, gr * (0.05 / unclipped), rtol=1e-4, atol=1e-9)
    for p, w, g in zip(model.parameters(), w0, grads):                    # and the update used them
        np.testing.assert_allclose(p.data, w - 0.5 * g, rtol=1e-6, atol=1e-9)


class _InfGrad(nn.Linear):
    """A Linear whose weight gradient overflows (a finite loss with an infinite gradient)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad[0, 0] = np.inf
        return dx


def test_non_finite_gradient_norm_stops_before_the_update():
    model = nn.Sequential(nn.Flatten(), _InfGrad(12, 3, rng=np.random.default_rng(0)))
    _, x, y = _tiny()
    before = [p.data.copy() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLoss, match="gradient norm became inf"):
        train_step(model, nn.SoftmaxCrossEntropy(), opt, x, y, clip_grad_norm=1.0)
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before)) and opt.steps == 0


# ------------------------------------------------------------------ EMA
def test_ema_follows_averaged_model_semantics(xp):
    """As AveragedModel(get_ema_multi_avg_fn(d), use_buffers=True): first update copies, then
    ema += (1 - d) (w - ema) for parameters and float buffers; the integer step counter is copied."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, 0.75)
    lin, bn = model[0], model[1]
    seq = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 2.0], [3.0, 0.0]]), np.array([[1.0, 6.0], [-1.0, 4.0]])]
    want = None
    for k, w in enumerate(seq):
        lin.weight.data = xp.asarray(w, dtype=np.float32)
        bn._buffers["running_mean"] = xp.asarray(w[0], dtype=np.float32)
        bn._buffers["num_batches_tracked"] = xp.asarray(k + 7)
        ema.update()
        want = w if want is None else want + 0.25 * (w - want)
    avg = ema.weights()
    np.testing.assert_allclose(avg["0.weight"], want, rtol=1e-6)
    np.testing.assert_allclose(avg["0.weight"], [[1.75, 3.0], [2.0, 3.25]], rtol=1e-6)      # by hand
    np.testing.assert_allclose(avg["1.running_mean"], want[0], rtol=1e-6)
    assert int(avg["1.num_batches_tracked"]) == 9 and ema.updates == 3
    live = backend.to_numpy(lin.weight.data).copy()
    with ema.swapped():
        np.testing.assert_allclose(backend.to_numpy(lin.weight.data), want, rtol=1e-6)
    np.testing.assert_array_equal(backend.to_numpy(lin.weight.data), live)       # swapped back exactly
    assert list(avg) == list(model.state_dict())
    with pytest.raises(SettingError, match=r"^ModelEMA decay must be in \(0, 1\), got 1.0$") as exc:
        ModelEMA(model, 1.0)
    assert exc.value.worded(lambda s: f"--{s}") == "ModelEMA --ema must be in (0, 1), got 1.0"
    with pytest.raises(RuntimeError, match=r"inside swapped\(\)"):
        ema.update_bn()
    with ema.swapped():
        ema.update_bn()                                 # no bn_loader: the averaged statistics stay
        np.testing.assert_allclose(backend.to_numpy(bn.running_mean), want[0], rtol=1e-6)


def test_update_bn_measures_the_plain_average_over_batches_with_dropout_off(xp):
    """As torch.optim.swa_utils.update_bn (momentum=None): the running mean is the mean of the batch means,
    the running variance the mean of the unbiased batch variances, the count the number of batches; dropout
    draws nothing meanwhile, and mode, momentum and drop rate are put back."""
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3, momentum=0.3), nn.ReLU())
    bn = model[2]
    bn.running_mean[...] = 7.0
    xs = [rng.standard_normal((n, 4)) * (k + 1) + k for k, n in enumerate((5, 8, 3))]
    batches = [(xp.asarray(x, dtype=np.float32), None) for x in xs]
    model.eval()
    state = nn.random.get_state()
    update_bn(batches, model)
    w, b = (backend.to_numpy(p.data).astype(np.float64) for p in model[0].parameters())
    hs = [x @ w.T + b for x in xs]
    np.testing.assert_allclose(backend.to_numpy(bn.running_mean), np.mean([h.mean(0) for h in hs], 0), rtol=1e-4)
    np.testing.assert_allclose(backend.to_numpy(bn.running_var), np.mean([h.var(0, ddof=1) for h in hs], 0),
                               rtol=1e-4)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3 and model[1].p == 0.5
    assert not model.training and nn.random.get_state() == state


def test_ema_measures_the_averages_batch_norm_statistics_before_evaluating(cifar_root, tmp_path):
    """The saved average's BN statistics are those update_bn measures for its weights on the bn_loader (not
    the averaged ones), so the checkpoint evaluates to what the run reported."""
    ds = load_dataset("cifar10", cifar_root, download=False)
    tr = make_trainer(ds, tmp_path)
    tr.fit(1)
    ck = load_checkpoint(tmp_path / "cnn_last.pkl")
    model = build_model("cnn")
    model.load_state_dict(ck.state_dict)
    update_bn(ema_of(tr).bn_batches(), model)
    measured = model.state_dict()
    plain = make_trainer(ds, tmp_path / "plain")
    ema_of(plain).bn_batches = None
    plain.fit(1)
    averaged = load_checkpoint(tmp_path / "plain" / "cnn_last.pkl").state_dict
    for key in ("bn1.running_mean", "bn1.running_var", "num_batches_tracked"):
        key = next(k for k in ck.state_dict if k.endswith(key))
        np.testing.assert_allclose(ck.state_dict[key], measured[key], rtol=1e-5, err_msg=key)
        assert not np.allclose(averaged[key], measured[key]), key
    res = evaluate_checkpoint(tmp_path / "cnn_last.pkl", cifar_root, limit=64, download=False)
    assert res["accuracy"] == tr.history[-1]["test_acc"]




def make_trainer(ds, ckdir, stop=None, seed=0, opt="adamw", ema=True):
    model = build_model("cnn", seed=seed)
    optimizer = AdamW(model.parameters(), 2e-3) if opt == "adamw" else SGD(model.parameters(), 0.02)
    nn.random.manual_seed(seed + 1)
    train = BatchLoader(ds.x_train[:128], ds.y_train[:128], 32, CIFAR10.mean, CIFAR10.std, shuffle=True,
                        augment_cfg=AugmentConfig(4, True, 0), rng=np.random.default_rng(seed), drop_last=True)
    test = BatchLoader(ds.x_test[:64], ds.y_test[:64], 64, CIFAR10.mean, CIFAR10.std)
    def bn_batches():           # augmented, a fresh stream each time: a shared one would break exact resume
        return BatchLoader(ds.x_train[:64], ds.y_train[:64], 32, CIFAR10.mean, CIFAR10.std,
                           augment_cfg=AugmentConfig(4, True, 0), rng=np.random.default_rng(5))
    return Trainer(Learner("cnn", model, optimizer, nn.SoftmaxCrossEntropy()), Loaders(train, test, 10),
                   Schedules(LRSchedule("cosine", 2e-3, 2), DropoutSchedule("none", 0.3)), RunOutput(ckdir),
                   LoopOptions(quiet=True, stop=stop, clip_grad_norm=0.5),
                   [ModelEMA(model, 0.8, bn_batches)] if ema else [])


def ema_of(trainer: Trainer) -> ModelEMA:
    return next(h for h in trainer.hooks if isinstance(h, ModelEMA))


def test_ema_and_clipping_resume_mid_epoch_exactly(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    straight = make_trainer(ds, tmp_path / "a")
    straight.fit(2)
    stopped = make_trainer(ds, tmp_path / "b", stop=StopAfter(4 + 1 + 1 + 1))   # 4 steps, eval, end; stop at step 2
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2, step 2"):
        stopped.fit(2)
    ck = load_checkpoint(tmp_path / "b" / "cnn_last.pkl")
    assert ck.hooks["ema"] == {"updates": 6, "decay": 0.8} and "ema" not in ck.optimizer
    resumed = make_trainer(ds, tmp_path / "b", seed=4)
    resumed.restore(ck)
    resumed.fit(2)
    a, b = straight.checkpoint(), resumed.checkpoint()
    for key in a.state_dict:
        assert np.array_equal(a.state_dict[key], b.state_dict[key]), key
        assert np.array_equal(a.training_weights[key], b.training_weights[key])
    assert [r["test_acc"] for r in straight.history] == [r["test_acc"] for r in resumed.history]
    # the checkpoint's weights are the average, which is what was evaluated
    assert not np.array_equal(a.state_dict["conv1.weight"], a.training_weights["conv1.weight"])


def test_resuming_a_run_without_ema_starts_the_average_there(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root, download=False)
    plain = make_trainer(ds, tmp_path, opt="sgd", ema=False)
    plain.fit(1)
    ck = load_checkpoint(tmp_path / "cnn_last.pkl")
    assert ck.hooks == {} and ck.training_weights is None
    tr = make_trainer(ds, tmp_path, opt="sgd", seed=3)
    tr.restore(ck)
    ema = ema_of(tr)
    assert ema.updates == 0 and all(np.array_equal(v, ck.state_dict[k]) for k, v in ema.weights().items())


def test_ema_through_the_cli(cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")
    argv = ["--data", str(cifar_root), *BASE, "--ema", "0.9", "--optimizer", "adamw", "--lr", "0.002",
            "--clip-grad-norm", "2", "--epochs", "2"]
    assert train_cli.main(argv) == 0
    ck = load_checkpoint(Path("ck/cnn_last.pkl"))
    assert (ck.args["ema"], ck.args["clip_grad_norm"], ck.args["weight_decay"]) == (0.9, 2.0, 0.01)
    assert ck.optimizer["type"] == "AdamW" and ck.optimizer["hyper"]["weight_decay"] == 0.01
    assert ck.hooks["ema"]["updates"] == 8
    best = max(ck.history, key=lambda r: r["test_acc"])
    res = evaluate_checkpoint("ck/cnn_best.pkl", cifar_root, limit=64, download=False)    # the best average
    assert res["accuracy"] == best["test_acc"] and res["loss"] == pytest.approx(best["test_loss"], rel=1e-5)


def test_ema_with_measured_statistics_resumes_exactly_through_the_cli(cifar_root, tmp_path, monkeypatch):
    """The average's BN statistics are measured on the same augmented images at every evaluation, so a run
    stopped after epoch 1 and resumed saves what a straight run does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNN_CIFAR_BACKEND", "numpy")
    argv = ["--data", str(cifar_root), *BASE, "--ema", "0.9", "--ema-bn-batches", "2", "--cutout", "8"]
    assert train_cli.main([*argv, "--epochs", "2", "--checkpoint-dir", "a"]) == 0
    assert train_cli.main([*argv, "--epochs", "1", "--checkpoint-dir", "b"]) == 0
    assert train_cli.main([*argv, "--epochs", "2", "--resume", "b/cnn_last.pkl", "--checkpoint-dir", "b"]) == 0
    a, b = (load_checkpoint(Path(d, "cnn_last.pkl")) for d in "ab")
    assert int(a.state_dict["bn1.num_batches_tracked"]) == 2                     # measured on 2 batches
    for key in a.state_dict:
        assert np.array_equal(a.state_dict[key], b.state_dict[key]), key


@pytest.mark.parametrize("flags,msg", [(["--ema", "1"], "argument --ema: must be in [0, 1), got 1"),
                                       (["--clip-grad-norm", "-1"],
                                        "argument --clip-grad-norm: must be a non-negative number, got -1"),
                                       (["--optimizer", "adamx"], "argument --optimizer: invalid choice: 'adamx'")])
def test_optimizer_flag_errors(capsys, flags, msg):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--epochs", "1", *flags])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"train_cli.py: error: {msg}")
