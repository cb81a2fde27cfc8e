"""Conv2d's Winograd path (``nn/conv_winograd.py``): its gradients against finite differences in float64, its
float32 results against the im2col path's, and the rule that picks it."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.models import build_model
from cnn_cifar.nn import conv_device, conv_host, conv_winograd
from cnn_cifar.nn.layout import chwn_contiguous

from gradcheck import check_module


@pytest.fixture
def forced(monkeypatch):
    """The path for every 3x3 stride-1 conv, whatever its channels, batch and output size."""
    monkeypatch.setattr(conv_winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_winograd, "MIN_SAMPLES", 1)
    monkeypatch.setattr(conv_winograd, "MIN_COVERAGE", 0.0)


# Blocks: the default (one block at test sizes), one sample and one tile row per block (every block edge),
# and a few samples with ragged tile rows.
BLOCKS = {"one-block": None, "one-tile-row": 1, "ragged": 3000}

# (N, C, H, W, out, padding, bias)
CASES = [
    (2, 3, 5, 5, 4, 1, True),         # odd output: the last tiles hang over the edge
    (3, 2, 6, 7, 3, 1, False),        # even rows, odd columns
    (1, 4, 4, 5, 2, 0, True),         # no padding
    (2, 2, 5, 4, 3, 2, True),         # padding 2: a larger output than input
    (4, 3, 1, 1, 2, 1, False),        # a 1x1 map: one tile, mostly padding
    (5, 2, 8, 8, 2, 1, True),         # several tile rows and an odd batch
]


@pytest.fixture(params=[4, 2], ids=["F4x4", "F2x2"])
def tile(request, monkeypatch):
    """Both tile sizes: F(4x4, 3x3), the default, and F(2x2, 3x3)."""
    monkeypatch.setattr(conv_winograd, "TILE", request.param)
    return request.param


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_gradients_match_finite_differences(forced, monkeypatch, case, block, tile, threads):
    if BLOCKS[block] is not None:
        monkeypatch.setattr(conv_winograd, "BLOCK_BYTES", BLOCKS[block])
    n, c, h, w, o, p, bias = case
    conv = nn.Conv2d(c, o, 3, padding=p, bias=bias, rng=np.random.default_rng(1)).to(np.float64)
    x = np.random.default_rng(0).standard_normal((n, c, h, w))
    assert conv.path_for(chwn_contiguous(x)) is conv_winograd
    check_module(conv, x, max_points=300)


def test_weight_gradient_without_input_gradient_is_the_same(forced):
    grads = []
    for needs in (True, False):
        conv = nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(1)).to(np.float64)
        conv.needs_input_grad = needs
        y = conv(np.random.default_rng(0).standard_normal((3, 3, 5, 6)))
        assert (conv.backward(np.random.default_rng(2).standard_normal(y.shape)) is None) == (not needs)
        grads.append(conv.weight.grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("size,padding", [(7, 1), (8, 1), (15, 1), (6, 2)])
def test_float32_rounding_stays_small(monkeypatch, tile, size, padding):
    """At the widths where the path is used, in float32: output and both gradients against the float64 result,
    relative to each array's largest value. F(2x2) stays at im2col's rounding (about 5e-7); F(4x4)'s transforms
    (entries up to 8 and 1/24) bring it to about 5e-6."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((16, 64, size, size))
    dy = None
    results = {}
    for name, samples, dtype in (("float64", 10 ** 6, np.float64), ("im2col", 10 ** 6, np.float32),
                                 ("winograd", 1, np.float32)):
        monkeypatch.setattr(conv_winograd, "MIN_SAMPLES", samples)
        conv = nn.Conv2d(64, 96, 3, padding=padding, rng=np.random.default_rng(3)).to(dtype)
        y = conv(x.astype(dtype))
        dy = np.random.default_rng(4).standard_normal(y.shape) if dy is None else dy
        dx = conv.backward(dy.astype(dtype))
        assert (conv.path_for(chwn_contiguous(x.astype(dtype))) is conv_winograd) == (name == "winograd")
        results[name] = (y, dx, conv.weight.grad.copy(), conv.bias.grad.copy())
    bound = {2: 2e-6, 4: 2e-5}[tile]
    for k, what in enumerate(("y", "dx", "dW", "db")):
        ref = results["float64"][k]
        err = {name: np.abs(results[name][k] - ref).max() / np.abs(ref).max() for name in ("im2col", "winograd")}
        assert results["winograd"][k].dtype == np.float32, what
        assert err["winograd"] < bound, (what, err)
        if tile == 2:
            assert err["winograd"] < 3 * err["im2col"] + 1e-7, (what, err)


def test_airbench94_gradients_agree_on_both_host_paths(monkeypatch):
    """The network this path was built for: a training step's loss and every gradient alike in float32."""
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    grads = []
    for samples in (10 ** 6, 1):
        monkeypatch.setattr(conv_winograd, "MIN_SAMPLES", samples)
        model = build_model("airbench94", seed=0)
        model.train()
        out = model(x)
        paths = [m._saved[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
        model.backward(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
        grads.append({name: p.grad.copy() for name, p in model.named_parameters() if p.requires_grad})
    # the whitening 2x2 conv and the last conv (a 3x3 output) keep im2col; the other five take Winograd
    assert paths.count(conv_winograd) == 5 and paths[0] is conv_host and paths[-1] is conv_host
    for name, ref in grads[0].items():
        scale = max(np.abs(ref).max(), 1e-30)
        assert np.abs(grads[1][name] - ref).max() / scale < 2e-5, name


def test_the_rule_that_picks_the_path(xp):
    """Host float32/float64 3x3 stride-1 convs with the channels, batch and output size to gain; never on a
    GPU (the device path), never in float16, never strided, dilated, grouped or on a 3x3 output."""
    xc = backend.xp.zeros((64, 7, 7, conv_winograd.MIN_SAMPLES), dtype=np.float32)
    wide = nn.Conv2d(64, 64, 3, padding=1)
    expected = conv_winograd if backend.is_host(xc) else conv_device
    assert wide.path_for(xc) is expected
    if not backend.is_host(xc):
        return
    assert wide.path_for(xc[..., 1:]) is conv_host                              # one sample short
    assert wide.path_for(xc.astype(np.float16)) is conv_host
    assert wide.path_for(xc[:, :3, :3]) is conv_host                             # 3x3 output: 9 of 16 pixels
    assert nn.Conv2d(64, 64, 3, padding=1, stride=2).path_for(xc) is conv_host
    assert nn.Conv2d(64, 64, 3, padding=2, dilation=2).path_for(xc) is conv_host
    assert nn.Conv2d(64, 64, 3, padding=1, groups=2).path_for(xc) is conv_host
    assert nn.Conv2d(64, 64, 5, padding=2).path_for(xc) is conv_host
    narrow = backend.xp.zeros((16, 7, 7, conv_winograd.MIN_SAMPLES), dtype=np.float32)
    assert nn.Conv2d(16, 64, 3, padding=1).path_for(narrow) is conv_host         # below MIN_CHANNELS
    assert conv_winograd.coverage(15, 15, 4) == conv_winograd.coverage(15, 15, 2) == pytest.approx(225 / 256)
    assert conv_winograd.saving(15, 15, 4) == pytest.approx(9 * 225 / (36 * 16))
    assert conv_winograd.saving(7, 7, 2) == pytest.approx(9 * 49 / (16 * 16))
