"""Every layer's backward against central finite differences in float64 (relative error < 1e-6)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn

from gradcheck import check_module, numeric_grad, rel_error


def _x(shape, seed=0):
    return backend.to_device(np.random.default_rng(seed).standard_normal(shape))


# (N, C, H, W, out, kernel, stride, padding, dilation, groups, bias)
CONV_CASES = [
    (1, 3, 5, 5, 4, 3, 1, 0, 1, 1, True),          # batch 1, no padding
    (2, 3, 7, 6, 5, 3, 2, 1, 1, 1, True),          # stride 2, non-square input
    (3, 4, 8, 8, 6, 3, 1, 1, 2, 2, False),         # dilation 2, groups 2, odd batch
    (2, 4, 6, 6, 4, 3, 1, 1, 1, 4, True),          # depthwise
    (2, 2, 5, 7, 3, (2, 3), (1, 2), (0, 1), 1, 1, True),   # rectangular kernel/stride/padding
    (5, 3, 4, 4, 2, 1, 2, 0, 1, 1, False),         # 1x1 stride-2 shortcut conv
    (1, 2, 6, 6, 4, 3, 3, 2, 1, 2, True),          # stride larger than 2, big padding, groups
    (2, 3, 9, 8, 4, 3, 2, 1, 2, 1, True),          # strided and dilated: input gradient by col2im
    (2, 2, 4, 5, 3, 3, 1, 3, 1, 1, True),          # stride 1, padding > dilation*(k-1): col2im, not flipped conv
    (2, 2, 5, 5, 3, 3, 1, (1, 3), 1, 1, False),    # ... on one axis only
    (2, 4, 7, 7, 4, (3, 2), 1, (2, 1), (2, 3), 2, True),   # stride 1, dilated, rectangular, groups: flipped conv
]


def _conv_and_input(case):
    n, c, h, w, o, k, s, p, d, g, b = case
    conv = nn.Conv2d(c, o, k, s, p, d, g, bias=b, rng=np.random.default_rng(1)).to(np.float64)
    return conv, _x((n, c, h, w))


# Tilings crossed with the CPU's threaded paths: serial under every tiling; threaded with one tile (the
# channel-parallel passes) and with ragged tiles (tile runs on worker threads as well).
CONV_MODES = [("one-tile", "serial"), ("pixel-tiles", "serial"), ("ragged-tiles", "serial"),
              ("one-tile", "threaded"), ("ragged-tiles", "threaded")]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("tiling,threads", CONV_MODES, ids=[f"{t}-{m}" for t, m in CONV_MODES], indirect=True)
def test_conv2d_gradients(xp, case, tiling, threads):
    """Every input and weight entry up to 300 (sampled beyond): tile and padding edges are hit either way."""
    check_module(*_conv_and_input(case), max_points=300)


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv2d_weight_gradient_without_input_gradient(xp, case, tiling):
    """needs_input_grad=False takes another path to dW (columns of x, not of dy); same result."""
    grads = []
    for needs in (True, False):
        conv, x = _conv_and_input(case)
        conv.needs_input_grad = needs
        y = conv(x)
        dx = conv.backward(_x(y.shape, seed=5))
        assert (dx is None) == (not needs)
        grads.append(backend.to_numpy(conv.weight.grad))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,fin,fout", [(1, 3, 2), (4, 7, 5), (9, 16, 3)])
def test_linear_gradients(xp, n, fin, fout):
    check_module(nn.Linear(fin, fout, rng=np.random.default_rng(2)).to(np.float64), _x((n, fin)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (5, 2, 3, 3), (1, 4, 3, 2)])
def test_batchnorm2d_gradients(xp, shape, training, threads):
    bn = nn.BatchNorm2d(shape[1]).to(np.float64)
    rng = np.random.default_rng(3)
    bn.weight.data = backend.to_device(rng.uniform(0.5, 1.5, shape[1]))
    bn.bias.data = backend.to_device(rng.standard_normal(shape[1]))
    bn.running_mean = backend.to_device(rng.standard_normal(shape[1]))
    bn.running_var = backend.to_device(rng.uniform(0.5, 2, shape[1]))
    bn.train(training)
    check_module(bn, _x(shape))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (16, 4)])
def test_batchnorm1d_gradients(xp, shape, training):
    bn = nn.BatchNorm1d(shape[1]).to(np.float64)
    bn.weight.data = backend.to_device(np.random.default_rng(4).uniform(0.5, 1.5, shape[1]))
    bn.train(training)
    check_module(bn, _x(shape))


class _FusedBN(nn.Module):
    """relu(bn(x) + r) (BatchNormAddReLU2d), the residual r held as a parameter so that check_module checks its
    gradient (the second value backward returns) too; without ``residual``, relu(bn(x)) (BatchNormReLU2d)."""

    def __init__(self, shape, training, residual):
        super().__init__()
        c, rng = shape[1], np.random.default_rng(5)
        self.bn = (nn.BatchNormAddReLU2d if residual else nn.BatchNormReLU2d)(c).to(np.float64)
        self.bn.weight.data = backend.to_device(rng.uniform(0.5, 1.5, c))
        self.bn.bias.data = backend.to_device(rng.standard_normal(c) * 0.5)
        self.bn.running_mean = backend.to_device(rng.standard_normal(c) * 0.3)
        self.bn.running_var = backend.to_device(rng.uniform(0.5, 2, c))
        self.res = nn.Parameter(backend.to_device(rng.standard_normal(shape))) if residual else None
        self.train(training)

    def forward(self, x):
        return self.bn(x) if self.res is None else self.bn(x, self.res.data)

    def backward(self, dy):
        if self.res is None:
            return self.bn.backward(dy)
        dx, dres = self.bn.backward(dy)
        self.res.grad += dres
        return dx


@pytest.mark.parametrize("fused", ["relu", "residual+relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 3, 2), (3, 2, 1, 1)])
def test_batchnorm_fused_relu_and_residual_gradients(xp, shape, training, fused, threads):
    """The fused layers, BatchNormReLU2d and BatchNormAddReLU2d: the input's, the residual's and the parameters'
    gradients, through the host path, the GPU kernels (training) and the GPU's autograd-enabled eval path."""
    check_module(_FusedBN(shape, training, fused.startswith("residual")), _x(shape))


def test_batchnorm_zero_gamma_gradient(xp):
    """A zero scale (zero-init residual trick) must still give the right dgamma."""
    bn = nn.BatchNorm2d(3).to(np.float64)
    bn.weight.data[...] = 0
    check_module(bn, _x((2, 3, 3, 3)))


POOL_CASES = [
    (nn.MaxPool2d, (2, 3, 6, 6), 2, None, 0),
    (nn.MaxPool2d, (1, 2, 7, 5), 3, 2, 1),
    (nn.MaxPool2d, (3, 2, 5, 5), 2, 1, 0),     # overlapping windows
    (nn.MaxPool2d, (2, 2, 5, 7), 2, None, 0),  # disjoint windows that leave the last row/column uncovered
    (nn.MaxPool2d, (2, 3, 8, 8), 2, 3, 0),     # stride > kernel: gaps between windows
    (nn.MaxPool2d, (1, 2, 5, 5), 2, 2, 1),     # padded, disjoint, last padded row uncovered
    (nn.MaxPool2d, (2, 2, 6, 7), (2, 3), (3, 2), (1, 0)),   # rectangular: disjoint on one axis only
    (nn.AvgPool2d, (2, 3, 6, 6), 2, None, 0),
    (nn.AvgPool2d, (1, 2, 7, 5), 3, 2, 1),
    (nn.AvgPool2d, (3, 2, 5, 5), 2, 1, 0),
    (nn.AvgPool2d, (2, 2, 5, 7), 2, None, 0),
    (nn.AvgPool2d, (2, 3, 8, 8), 2, 3, 0),
    (nn.AvgPool2d, (2, 2, 6, 7), (2, 3), (3, 2), (1, 0)),
]


@pytest.mark.parametrize("cls,shape,k,s,p", POOL_CASES, ids=[f"pool{i}" for i in range(len(POOL_CASES))])
def test_pool_gradients(xp, cls, shape, k, s, p):
    check_module(cls(k, s, p), _x(shape))


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 5, 3, 2)])
def test_global_avg_pool_gradients(xp, shape):
    check_module(nn.GlobalAvgPool2d(), _x(shape))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5)])
def test_relu_gradients(xp, shape, threads):
    check_module(nn.ReLU(), _x(shape))


def test_dropout_gradients(xp):
    check_module(nn.Dropout(0.3), _x((4, 6)))
    check_module(nn.Dropout2d(0.4), _x((3, 4, 3, 3)))


def test_flatten_gradients(xp):
    check_module(nn.Flatten(), _x((2, 3, 4, 5)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n,k", [(1, 3), (5, 10), (8, 4)])
def test_softmax_cross_entropy_gradients(xp, n, k, smoothing):
    rng = np.random.default_rng(5)
    logits = backend.to_device(rng.standard_normal((n, k)) * 3)
    y = backend.to_device(rng.integers(0, k, n))
    crit = nn.SoftmaxCrossEntropy(label_smoothing=smoothing)
    crit(logits, y)
    analytic = backend.to_numpy(crit.backward()).ravel()
    _, num = numeric_grad(lambda: crit(logits, y), logits)
    assert rel_error(analytic, num) < 1e-6


def test_softmax_cross_entropy_is_stable_for_huge_logits(xp):
    logits = backend.to_device(np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 0.0]]))
    loss = nn.SoftmaxCrossEntropy()(logits, backend.to_device(np.array([0, 1])))
    assert np.isfinite(loss) and loss < 1e-6


def test_softmax_cross_entropy_matches_definition(xp):
    rng = np.random.default_rng(6)
    z = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    eps = 0.2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    q = np.full((6, 5), eps / 5)
    q[np.arange(6), y] += 1 - eps
    want = float(-(q * np.log(p)).sum(1).mean())
    got = nn.SoftmaxCrossEntropy(eps)(backend.to_device(z), backend.to_device(y))
    assert abs(got - want) < 1e-12


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cin,cout,stride,n", [(4, 4, 1, 2), (3, 6, 2, 3), (4, 4, 2, 1)])
def test_basic_block_gradients(xp, cin, cout, stride, n, training):
    """Batch 1 trains fine: after the stride-2 conv each BN still sees 3x3 = 9 values per channel."""
    block = nn.BasicBlock(cin, cout, stride, rng=np.random.default_rng(7)).to(np.float64)
    block.train(training)
    check_module(block, _x((n, cin, 6, 6)))


def test_sequential_gradients(xp):
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(8)), nn.BatchNorm2d(3),
                        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(12, 4, rng=np.random.default_rng(9))).to(np.float64)
    check_module(seq, _x((3, 2, 4, 4)))
