"""The peers' networks (net-basic, net-dilated, cifarnet, senet) and the layers they brought: the
depthwise fast path, Sigmoid, Squeeze-and-Excitation, the residual sum."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.models import build_model, list_models, recipe
from cnn_cifar.nn import depthwise
from cnn_cifar.optim import build_optimizer

from gradcheck import check_module

ZOO = {"net-basic": 620_362, "net-dilated": 193_280, "cifarnet": 174_762, "senet": 330_794}
HEAD_INPUTS = {"net-basic": 256, "net-dilated": 64, "cifarnet": 384, "senet": 256}
NO_HEAD_BIAS = {"net-dilated"}           # its output layer is a bias-free 1x1 conv


def _x(shape, seed=0, dtype=np.float64):
    return backend.to_device(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_counts_as_published_and_for_cifar100(name):
    assert name in list_models()
    assert build_model(name).num_parameters() == ZOO[name]
    per_class = HEAD_INPUTS[name] + (name not in NO_HEAD_BIAS)
    assert build_model(name, num_classes=100).num_parameters() == ZOO[name] + 90 * per_class


@pytest.mark.parametrize("name", list(ZOO))
def test_forward_and_backward_on_a_tiny_batch(xp, name):
    model = build_model(name, num_classes=7)
    y = model(_x((2, 3, 32, 32), dtype=np.float32))
    assert y.shape == (2, 7) and y.dtype == np.float32
    crit = nn.SoftmaxCrossEntropy()
    crit(y, backend.to_device(np.array([1, 5])))
    assert model.backward(crit.backward()) is None            # no gradient for the images themselves
    for pname, p in model.named_parameters():
        assert p.grad.shape == p.data.shape and float(abs(p.grad).sum()) > 0, pname


# (model, input size, dropout): the global-pool networks take smaller images (faster); net-dilated's
# fixed 5x5 pool needs 32x32. Dropout rates where the check is clear of ReLU kinks at h = 1e-6 (cifarnet with
# dropout 0.1 crosses one: its error falls from 2.5e-3 to 1.2e-5 as h goes from 1e-5 to 1e-6).
# senet's stem BN scale reaches the loss through ReLU, a depthwise conv and the next BN only: its gradient is
# zero but for that BN's eps (relative errors 6e-6, 6e-5, 2e-4 at h = 1e-5, 1e-6, 1e-7: rounding noise).
GRADCHECKS = [("cifarnet", 16, 0.0, ()), ("senet", 16, 0.1, ("stem.1.weight",)),
              pytest.param("net-dilated", 32, 0.1, (), marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,size,dropout,skip", GRADCHECKS)
def test_whole_model_gradcheck(name, size, dropout, skip):
    """In float64, a few entries of the input and of every parameter (net-basic is plain conv, ReLU,
    pool and linear layers, checked one by one)."""
    model = build_model(name, dropout=dropout, seed=2).to(np.float64)
    next(m for m in model.modules() if isinstance(m, nn.Conv2d)).needs_input_grad = True
    check_module(model, _x((2, 3, size, size), seed=3), max_points=3, skip=skip)


STEPS = {"net-basic": 60, "net-dilated": 40, "cifarnet": 40, "senet": 40}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_each_model_overfits_64_images(name):
    """With its own optimizer and learning rate, regularisation off, each fits 64 random-label images
    (accuracy on them with dropout off)."""
    from cnn_cifar.training import train_step
    rng = np.random.default_rng(0)
    size = 16 if name in ("cifarnet", "senet") else 32        # global-pool heads take any size: faster
    x = backend.to_device(rng.standard_normal((64, 3, size, size)).astype(np.float32))
    y = backend.to_device(rng.integers(0, 10, 64))
    model = build_model(name, dropout=0.0, seed=0)
    r = recipe(name)
    opt = build_optimizer(r.optimizer, model.parameters(), lr=r.max_lr or r.lr, momentum=0.9, nesterov=r.nesterov)
    crit = nn.SoftmaxCrossEntropy()
    losses = [train_step(model, crit, opt, x, y)[0] for _ in range(STEPS[name])]
    with nn.no_grad():           # batch statistics: 40 steps at a high rate leave the running ones behind
        acc = float((backend.to_numpy(model(x)).argmax(1) == backend.to_numpy(y)).mean())
    assert losses[-1] < 0.2 * losses[0] and acc >= 0.95, (losses[0], losses[-1], acc)


# (N, C, H, W, kernel, stride, padding, dilation, bias)
DEPTHWISE = [(2, 4, 6, 6, 3, 1, 1, 1, True), (3, 5, 9, 8, 3, 2, 1, 1, False), (2, 3, 12, 12, 3, 1, 4, 4, True),
             (1, 6, 7, 9, (3, 2), (2, 1), (0, 1), (1, 2), True), (2, 2, 5, 5, 5, 1, 2, 1, False)]


@pytest.mark.parametrize("case", DEPTHWISE, ids=[f"dw{i}" for i in range(len(DEPTHWISE))])
def test_depthwise_fast_path_equals_the_grouped_path(xp, case, monkeypatch):
    """The depthwise path against the general one (host tiles or device kernels) on the same conv, which
    takes it once Conv2d no longer calls itself depthwise."""
    n, c, h, w, k, s, p, d, b = case
    x, dy = _x((n, c, h, w)), None
    results = []
    for fast in (True, False):
        conv = nn.Conv2d(c, c, k, s, p, d, groups=c, bias=b, rng=np.random.default_rng(1)).to(np.float64)
        if not fast:
            monkeypatch.setattr(nn.Conv2d, "depthwise", False)
        assert (conv.path_for(x) is depthwise) is fast
        y = conv(x)
        dy = _x(y.shape, seed=4) if dy is None else dy
        dx = conv.backward(dy)
        results.append([backend.to_numpy(a) for a in (y, dx, conv.weight.grad)]
                       + ([backend.to_numpy(conv.bias.grad)] if b else []))
    for fast, general in zip(*results):
        np.testing.assert_allclose(fast, general, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", DEPTHWISE, ids=[f"dw{i}" for i in range(len(DEPTHWISE))])
def test_depthwise_fast_path_gradients(xp, case):
    n, c, h, w, k, s, p, d, b = case
    conv = nn.Conv2d(c, c, k, s, p, d, groups=c, bias=b, rng=np.random.default_rng(1)).to(np.float64)
    assert conv.depthwise
    check_module(conv, _x((n, c, h, w)), max_points=200)


def test_depthwise_path_only_for_one_channel_per_group():
    assert not nn.Conv2d(4, 8, 3, groups=4).depthwise           # a channel multiplier: the general path
    assert not nn.Conv2d(4, 4, 3, groups=2).depthwise
    assert not nn.Conv2d(1, 1, 3).depthwise


def test_sigmoid_values_and_gradient(xp):
    s = nn.Sigmoid()
    x = backend.to_device(np.array([-800.0, -30.0, -1.0, 0.0, 2.0, 800.0]))
    y = backend.to_numpy(s(x))
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(y, 1 / (1 + np.exp(-backend.to_numpy(x))), rtol=1e-15, atol=0)
    assert np.isfinite(y).all() and y[0] == 0.0 and y[-1] == 1.0
    check_module(nn.Sigmoid(), _x((3, 5)))
    check_module(nn.Sigmoid(), _x((2, 3, 4, 4)))


@pytest.mark.parametrize("shape,squeeze", [((2, 6, 4, 4), 2), ((3, 8, 5, 3), 4), ((1, 4, 1, 1), 1)])
def test_squeeze_excitation_gradients(xp, shape, squeeze):
    se = nn.SqueezeExcitation(shape[1], squeeze, rng=np.random.default_rng(2)).to(np.float64)
    check_module(se, _x(shape, seed=5))


def test_squeeze_excitation_scales_channels_by_the_gate():
    se = nn.SqueezeExcitation(3, 2, rng=np.random.default_rng(0)).to(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    pooled = x.mean(axis=(2, 3))
    hidden = np.maximum(pooled @ se.fc1.weight.data.T + se.fc1.bias.data, 0)
    gate = 1 / (1 + np.exp(-(hidden @ se.fc2.weight.data.T + se.fc2.bias.data)))
    np.testing.assert_allclose(se(x), x * gate[:, :, None, None], rtol=1e-12)


@pytest.mark.parametrize("projected", [False, True])
def test_residual_sum_gradients(xp, projected):
    rng = np.random.default_rng(3)
    main = nn.Sequential(nn.Conv2d(3, 4 if projected else 3, 3, padding=1, rng=rng), nn.ReLU())
    shortcut = nn.Conv2d(3, 4, 1, rng=rng) if projected else None
    check_module(nn.ResidualSum(main, shortcut).to(np.float64), _x((2, 3, 5, 5), seed=6))
