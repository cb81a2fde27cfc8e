"""Forward results pinned against plain-loop references (tests/reference.py) for every conv and pool
configuration, under every column tiling and with the threaded CPU paths off and forced on.

A gradient check only proves that backward matches whatever forward computes; these tests pin what forward
computes: PyTorch's definitions and PyTorch's weight layout (O, C/groups, kh, kw).
"""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn

import reference

# (N, C, H, W, out, kernel, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "plain": (2, 3, 6, 6, 4, 3, 1, 0, 1, 1, True),
    "stride2-pad1": (2, 3, 7, 7, 4, 3, 2, 1, 1, 1, True),
    "dilation2": (2, 3, 9, 8, 5, 3, 1, 2, 2, 1, True),
    "dilation-rect": (1, 2, 9, 10, 3, 3, 1, (1, 2), (3, 2), 1, False),
    "strided-dilated": (3, 2, 10, 9, 4, 3, 2, 1, 2, 1, True),
    "groups2": (2, 4, 6, 5, 6, 3, 1, 1, 1, 2, True),
    "groups3-strided": (2, 6, 7, 7, 9, 3, 2, 1, 1, 3, False),
    "depthwise": (2, 4, 6, 6, 4, 3, 1, 1, 1, 4, True),
    "depthwise-multiplier": (2, 3, 5, 5, 6, 3, 1, 1, 1, 3, True),
    "rect-kernel": (2, 2, 5, 7, 3, (2, 3), (1, 2), (0, 1), 1, 1, True),
    "rect-kernel-5x1": (1, 3, 8, 6, 2, (5, 1), 1, (2, 0), 1, 1, True),
    "1x1-stride2": (5, 3, 4, 4, 2, 1, 2, 0, 1, 1, False),
    "big-padding": (1, 2, 4, 4, 3, 3, 1, 3, 1, 1, True),
    "stride3-groups": (1, 2, 6, 6, 4, 3, 3, 2, 1, 2, True),
}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv2d_forward_matches_the_loop_definition(xp, case, tiling, threads):
    n, c, h, w, o, k, s, p, d, g, b = case
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(c, o, k, s, p, d, g, bias=b, rng=rng).to(np.float64)
    assert conv.weight.shape == (o, c // g, *_pair(k))                      # PyTorch's layout
    if b:
        conv.bias.data = backend.to_device(rng.standard_normal(o))
    x = rng.standard_normal((n, c, h, w))
    want = reference.conv2d(x, backend.to_numpy(conv.weight.data), backend.to_numpy(conv.bias.data) if b else None,
                            _pair(s), _pair(p), _pair(d), g)
    got = backend.to_numpy(conv(backend.to_device(x)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_conv2d_float32_matches_the_definition(xp, tiling):
    """The training dtype: float32 in, float32 out, within float32 rounding of the float64 definition."""
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(3, 8, 3, 1, 1, rng=rng)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = conv(backend.to_device(x))
    assert y.dtype == np.float32
    want = reference.conv2d(x.astype(np.float64), backend.to_numpy(conv.weight.data).astype(np.float64),
                            backend.to_numpy(conv.bias.data).astype(np.float64), (1, 1), (1, 1))
    np.testing.assert_allclose(backend.to_numpy(y), want, rtol=1e-4, atol=1e-5)


def test_conv2d_layout_is_cross_correlation_with_group_blocks():
    """Pin the weight layout by hand: one tap set to 1 copies exactly one input channel, unflipped, from the
    group that owns that output channel."""
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False).to(np.float64)
    conv.weight.data[...] = 0
    conv.weight.data[3, 1, 0, 2] = 1.0            # output 3 is in group 1: input channels 2..3, so channel 3
    x = np.random.default_rng(2).standard_normal((1, 4, 5, 5))
    y = conv(x)
    want = np.zeros((5, 5))
    want[1:, :-1] = x[0, 3, :-1, 1:]             # tap (0, 2) reads x[i - 1, j + 1]
    np.testing.assert_array_equal(y[0, 3], want)
    assert not y[0, :3].any()


# (cls, shape, kernel, stride, padding)
POOL_CASES = {
    "2x2": ((2, 3, 6, 6), 2, None, 0),
    "3s2p1": ((1, 2, 7, 5), 3, 2, 1),
    "overlapping": ((3, 2, 5, 5), 2, 1, 0),
    "uncovered-edge": ((2, 2, 5, 7), 2, None, 0),
    "stride-gt-kernel": ((2, 3, 8, 8), 2, 3, 0),
    "padded-disjoint": ((1, 2, 5, 5), 2, 2, 1),
    "rectangular": ((2, 2, 6, 7), (2, 3), (3, 2), (1, 0)),
    "3x3-pad1-stride1": ((2, 2, 4, 4), 3, 1, 1),
}


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,k,s,p", list(POOL_CASES.values()), ids=list(POOL_CASES))
def test_pool_forward_matches_the_loop_definition(xp, kind, shape, k, s, p, threads):
    x = np.random.default_rng(3).standard_normal(shape)
    x[0, 0] = -5.0 - np.abs(x[0, 0])               # all-negative channel: zero padding must never win a max
    cls, ref = (nn.MaxPool2d, reference.max_pool2d) if kind == "max" else (nn.AvgPool2d, reference.avg_pool2d)
    pool = cls(k, s, p)
    want = ref(x, _pair(k), _pair(s if s is not None else k), _pair(p))
    got = backend.to_numpy(pool(backend.to_device(x)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with nn.no_grad():                               # the no-grad path skips argmax bookkeeping: same values
        np.testing.assert_allclose(backend.to_numpy(pool(backend.to_device(x))), want, rtol=1e-12, atol=1e-12)


def test_global_avg_pool_and_flatten_match_torch_order(xp):
    x = np.random.default_rng(4).standard_normal((3, 4, 5, 2))
    np.testing.assert_allclose(backend.to_numpy(nn.GlobalAvgPool2d()(backend.to_device(x))), x.mean(axis=(2, 3)),
                               rtol=1e-12)
    np.testing.assert_array_equal(backend.to_numpy(nn.Flatten()(backend.to_device(x))), x.reshape(3, -1))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_forward_matches_the_definition(xp, training, threads):
    rng = np.random.default_rng(5)
    bn = nn.BatchNorm2d(3).to(np.float64)
    bn.weight.data = backend.to_device(rng.uniform(0.5, 1.5, 3))
    bn.bias.data = backend.to_device(rng.standard_normal(3))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn.running_mean, bn.running_var = backend.to_device(rm), backend.to_device(rv)
    bn.train(training)
    x = rng.standard_normal((4, 3, 5, 6)) * 3 + 1
    mean, var = (x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))) if training else (rm, rv)
    gamma, beta = backend.to_numpy(bn.weight.data), backend.to_numpy(bn.bias.data)
    want = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) * gamma[None, :, None, None] \
        + beta[None, :, None, None]
    np.testing.assert_allclose(backend.to_numpy(bn(backend.to_device(x))), want, rtol=1e-10, atol=1e-12)
    if training:
        np.testing.assert_allclose(backend.to_numpy(bn.running_var), 0.9 * rv + 0.1 * x.var(axis=(0, 2, 3), ddof=1),
                                   rtol=1e-12)


def test_relu_forward_threaded(xp, threads):
    x = np.random.default_rng(6).standard_normal((3, 4, 5, 5))
    np.testing.assert_array_equal(backend.to_numpy(nn.ReLU()(backend.to_device(x))), np.maximum(x, 0))


def test_padding_buffers_of_equal_shape_but_different_padding_do_not_mix(xp):
    """A 6x6 input padded by 2 and a 4x4 input padded by 3 both give 10x10 padded buffers; the second must not
    see the first one's values in what is its border (the reused buffer's border is written only once)."""
    rng = np.random.default_rng(7)
    first = nn.Conv2d(2, 3, 3, padding=2, rng=rng).to(np.float64)
    second = nn.Conv2d(2, 3, 3, padding=3, rng=rng).to(np.float64)
    first(backend.to_device(rng.standard_normal((1, 2, 6, 6)) + 10))
    x = rng.standard_normal((1, 2, 4, 4))
    want = reference.conv2d(x, backend.to_numpy(second.weight.data), backend.to_numpy(second.bias.data),
                            (1, 1), (3, 3))
    np.testing.assert_allclose(backend.to_numpy(second(backend.to_device(x))), want, rtol=1e-10, atol=1e-12)


def test_padding_buffers_padded_to_a_size_do_not_mix_with_symmetric_ones(xp):
    """An 8x8 input padded by 1 on every side and a 7x7 input padded by 1 up to 10x10 (as the Winograd path's
    tiles need) share a buffer shape and a padding; the second must see zeros where the first had its last
    row and column."""
    from cnn_cifar import runtime
    with runtime.padded(backend.xp.ones((1, 8, 8, 2)), 1, 1):
        pass
    with runtime.padded(backend.xp.ones((1, 7, 7, 2)), 1, 1, size=(10, 10)) as buf:
        got = backend.to_numpy(buf)
    want = np.zeros((1, 10, 10, 2))
    want[:, 1:8, 1:8] = 1
    np.testing.assert_array_equal(got, want)
