"""Layer behaviour beyond gradients: BN statistics, dropout, state dicts, grouped conv, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.models import build_model


def _x(shape, seed=0, dtype=np.float32):
    return backend.to_device(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def test_conv2d_matches_direct_definition(xp):
    """Compare against a plain loop over output positions (test-only reference)."""
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, rng=rng).to(np.float64)
    conv.bias.data = backend.to_device(rng.standard_normal(4))
    x = rng.standard_normal((2, 3, 7, 7))
    w, b = backend.to_numpy(conv.weight.data), backend.to_numpy(conv.bias.data)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = xpad[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            ref[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    np.testing.assert_allclose(backend.to_numpy(conv(backend.to_device(x))), ref, rtol=1e-10, atol=1e-12)


def test_depthwise_conv_equals_per_channel_loop(xp):
    rng = np.random.default_rng(1)
    c = 4
    dw = nn.Conv2d(c, c, 3, padding=1, groups=c, rng=rng).to(np.float64)
    x = _x((2, c, 5, 5), dtype=np.float64)
    out = backend.to_numpy(dw(x))
    for ch in range(c):
        single = nn.Conv2d(1, 1, 3, padding=1).to(np.float64)
        single.weight.data = dw.weight.data[ch:ch + 1].copy()
        single.bias.data = dw.bias.data[ch:ch + 1].copy()
        np.testing.assert_allclose(out[:, ch:ch + 1], backend.to_numpy(single(x[:, ch:ch + 1])), rtol=1e-12)


def test_batchnorm_running_stats_and_eval(xp):
    bn = nn.BatchNorm2d(3)
    x = _x((4, 3, 5, 5)) * 2 + 1
    xn = backend.to_numpy(x).astype(np.float64)
    y = backend.to_numpy(bn(x))
    mean, var = xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))
    unbiased = xn.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(backend.to_numpy(bn.running_mean), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(bn.running_var), 0.9 + 0.1 * unbiased, rtol=1e-5)
    np.testing.assert_allclose(y, (xn - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-4)
    assert int(backend.to_numpy(bn.num_batches_tracked)) == 1
    bn.eval()
    y_eval = backend.to_numpy(bn(x))
    rm, rv = backend.to_numpy(bn.running_mean), backend.to_numpy(bn.running_var)
    np.testing.assert_allclose(y_eval, (xn - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(backend.to_numpy(bn.running_mean), rm)   # eval leaves stats alone


@pytest.mark.parametrize("residual", [False, True], ids=["BatchNormReLU2d", "BatchNormAddReLU2d"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_relu_residual_equals_the_three_layers(xp, training, residual):
    """BatchNormAddReLU2d()(x, r) is ReLU()(BatchNorm2d()(x) + r), and BatchNormReLU2d()(x) is ReLU()(BatchNorm2d()(x))
    (same statistics, same gradients of x, r and the parameters: backward returns (dx, dr), or dx); both take
    BatchNorm2d's state dict as it is; nothing is kept under no_grad; a residual of another shape is refused."""
    rng = np.random.default_rng(1)
    x, r, dy = (_x((4, 3, 5, 5), s, np.float64) for s in (1, 2, 3))
    fused = (nn.BatchNormAddReLU2d if residual else nn.BatchNormReLU2d)(3).to(np.float64)
    plain = nn.BatchNorm2d(3).to(np.float64)
    for bn in (fused, plain):
        bn.weight.data = backend.to_device(rng.uniform(0.5, 1.5, 3))
        bn.bias.data = backend.to_device(np.array([0.3, -0.2, 0.0]))
        bn.train(training)
        rng = np.random.default_rng(1)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    fused.load_state_dict(plain.state_dict())
    relu = nn.ReLU()
    y = fused(x, r) if residual else fused(x)
    want = relu(plain(x) + r) if residual else relu(plain(x))
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(want), rtol=1e-12, atol=1e-12)
    assert 0 < float((backend.to_numpy(y) == 0).mean()) < 1
    grads = fused.backward(dy)
    d = relu.backward(dy)
    if residual:
        dx, dr = grads
        np.testing.assert_allclose(backend.to_numpy(dr), backend.to_numpy(d), rtol=1e-12, atol=1e-12)
    else:
        dx = grads
    for got, ref in ((dx, plain.backward(d)), (fused.weight.grad, plain.weight.grad),
                     (fused.bias.grad, plain.bias.grad), (fused.running_var, plain.running_var)):
        np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(ref), rtol=1e-12, atol=1e-12)
    assert repr(fused) == f"{type(fused).__name__}(3, eps=1e-05, momentum=0.1)"
    with nn.no_grad():
        fused(x, r) if residual else fused(x)
    assert not fused.has_saved
    if residual:
        with pytest.raises(ValueError, match="residual of shape"):
            fused(x, r[:, :2])


@pytest.mark.parametrize("make,shape", [(lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
                                        (lambda: nn.Conv2d(4, 4, 3, groups=2), (2, 4, 5, 5)),
                                        (lambda: nn.Linear(5, 3), (4, 5)),
                                        (lambda: nn.BatchNormReLU2d(3), (2, 3, 5, 5))],
                         ids=["conv", "conv-groups", "linear", "batchnorm"])
def test_gradients_accumulate_over_backward_calls(xp, make, shape):
    """As in PyTorch, parameter gradients add up over backward calls until zeroed: two calls give the sum of
    each call's gradients (on the GPU the convolution's weight gradient is added by cuBLAS in place)."""
    layer = make().to(np.float64)
    single = []
    for seed in (1, 2):
        for p in layer.parameters():
            p.grad[...] = 0
        y = layer(_x(shape, seed, np.float64))
        layer.backward(_x(y.shape, seed + 10, np.float64))
        single.append([backend.to_numpy(p.grad).copy() for p in layer.parameters()])
    for p in layer.parameters():
        p.grad[...] = 0
    for seed in (1, 2):
        y = layer(_x(shape, seed, np.float64))
        layer.backward(_x(y.shape, seed + 10, np.float64))
    for p, a, b in zip(layer.parameters(), *single):
        np.testing.assert_allclose(backend.to_numpy(p.grad), a + b, rtol=1e-12, atol=1e-12)


def test_dropout_expectation_and_eval_identity(xp):
    nn.random.manual_seed(0)
    d = nn.Dropout(0.6)
    x = backend.xp.ones((400, 500), dtype=np.float32)
    y = backend.to_numpy(d(x))
    assert abs(y.mean() - 1.0) < 0.01
    assert abs((y == 0).mean() - 0.6) < 0.01
    d.p = 0.2                         # p is read at call time
    assert abs((backend.to_numpy(d(x)) == 0).mean() - 0.2) < 0.01
    d.eval()
    assert d(x) is x
    d2 = nn.Dropout2d(0.5)
    y2 = backend.to_numpy(d2(backend.xp.ones((64, 32, 3, 3), dtype=np.float32)))
    per_channel = y2.reshape(64, 32, 9)
    assert np.all((per_channel == 0).all(axis=2) | (per_channel == 2).all(axis=2))


def test_set_dropout_reaches_every_dropout_layer():
    m = build_model("cnn")
    assert nn.dropout_rate(m) == 0.6
    nn.set_dropout(m, 0.25)
    assert m.dropout.p == 0.25 and nn.dropout_rate(m) == 0.25
    with pytest.raises(ValueError, match="p must be in"):
        nn.set_dropout(m, 1.0)
    assert nn.dropout_rate(build_model("resnet8")) == 0.0 and nn.dropout_rate(nn.Linear(2, 2)) is None


def test_state_dict_round_trip_gives_identical_outputs(xp):
    a = build_model("resnet8", seed=1)
    x = _x((3, 3, 16, 16))
    a(x)                                   # move BN running stats away from their initial values
    a.eval()
    b = build_model("resnet8", seed=2)
    b.load_state_dict(a.state_dict())
    b.eval()
    assert np.array_equal(backend.to_numpy(a(x)), backend.to_numpy(b(x)))
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())


def test_load_state_dict_rejects_bad_keys_and_shapes():
    m = build_model("cnn")
    sd = m.state_dict()
    missing = dict(sd)
    del missing["fc1.weight"]
    with pytest.raises(ValueError, match="missing keys.*fc1.weight"):
        m.load_state_dict(missing)
    extra = dict(sd, **{"fc3.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="unexpected keys.*fc3.weight"):
        m.load_state_dict(extra)
    wrong = dict(sd, **{"fc2.weight": np.zeros((5, 128), np.float32)})
    with pytest.raises(ValueError, match=r"fc2.weight.*\(10, 128\).*\(5, 128\)"):
        m.load_state_dict(wrong)


def test_conv_bad_input_messages():
    m = build_model("resnet8")
    with pytest.raises(ValueError, match=r"Conv2d 'conv1' expects 3 input channels.*\(2, 1, 32, 32\)"):
        m(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d 'conv1' expects a 4-D input.*\(3, 32, 32\)"):
        m(np.zeros((3, 32, 32), np.float32))
    conv = nn.Conv2d(1, 1, 5)
    with pytest.raises(ValueError, match=r"kernel \(5, 5\).*larger than the padded input \(3, 3\)"):
        conv(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)


def test_other_layers_bad_input_messages():
    with pytest.raises(ValueError, match=r"Linear 'fc1' expects input \(N, 1800\), got shape \(2, 10\)"):
        build_model("cnn").fc1(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d expects 4 input channels"):
        nn.BatchNorm2d(4)(np.zeros((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d: kernel \(4, 4\) is larger"):
        nn.MaxPool2d(4)(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="training needs more than one value per channel"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


def test_maxpool_routes_gradient_to_first_maximum():
    x = np.array([[[[1.0, 1.0], [0.0, 1.0]]]], dtype=np.float32)
    pool = nn.MaxPool2d(2)
    pool(x)
    dx = pool.backward(np.ones((1, 1, 1, 1), np.float32))
    assert dx.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]


def test_no_grad_keeps_nothing():
    m = build_model("cnn")
    with nn.no_grad():
        m(np.zeros((2, 3, 32, 32), np.float32))
    assert not any(layer.has_saved for layer in m.modules())


def test_inplace_relu_overwrites_its_input_and_has_the_same_gradient(xp):
    x = _x((2, 3, 4, 4), dtype=np.float64)
    dy = _x((2, 3, 4, 4), seed=1, dtype=np.float64)
    plain, inplace = nn.ReLU(), nn.ReLU(inplace=True)
    y_plain = plain(x)
    x2 = x.copy()
    y_in = inplace(x2)
    assert backend.to_numpy((x2 == y_in).all()) and backend.to_numpy((x2 >= 0).all())
    np.testing.assert_array_equal(backend.to_numpy(y_plain), backend.to_numpy(y_in))
    np.testing.assert_array_equal(backend.to_numpy(plain.backward(dy)), backend.to_numpy(inplace.backward(dy)))


@pytest.mark.parametrize("n", [1, 7, 8, 17, 64, 129])
def test_loader_batches_are_transposed_to_the_internal_layout_exactly(xp, n):
    """A loader's NCHW batch becomes a contiguous (C, H, W, N) copy; our own activations are passed through."""
    from cnn_cifar.nn import layout as F
    x = backend.to_device(np.random.default_rng(n).standard_normal((n, 3, 6, 5)).astype(np.float32))
    xc = F.chwn_contiguous(x)
    assert xc.flags.c_contiguous and xc.shape == (3, 6, 5, n)
    np.testing.assert_array_equal(backend.to_numpy(xc), backend.to_numpy(x).transpose(1, 2, 3, 0))
    strided = x[:, :, ::2]                                       # not C-contiguous: the plain copy path
    np.testing.assert_array_equal(backend.to_numpy(F.chwn_contiguous(strided)),
                                  backend.to_numpy(strided).transpose(1, 2, 3, 0))
    assert xp.shares_memory(F.chwn_contiguous(F.nchw(xc)), xc)     # already internal: no copy


@pytest.mark.parametrize("ho,wo,pixel_bytes,tile_bytes", [
    (32, 32, 10, 1000),       # 3 rows per tile, ragged last tile
    (8, 8, 4096, 10_000),     # a row (32 KB) split into 4 column ranges
    (5, 7, 1, 1 << 30),       # everything in one tile
    (4, 3, 1000, 1),          # one pixel per tile
])
def test_conv_tiles_cover_the_output_exactly_once(monkeypatch, ho, wo, pixel_bytes, tile_bytes):
    from cnn_cifar.nn import im2col
    monkeypatch.setattr(im2col, "TILE_BYTES", tile_bytes)
    seen = np.zeros((ho, wo), dtype=int)
    for t in im2col.tiles(ho, wo, pixel_bytes, np.empty(0)):
        assert t.rows == 1 or (t.x0, t.x1) == (0, wo)        # several rows only with every column
        assert t.rows * (t.x1 - t.x0) * pixel_bytes <= max(tile_bytes, pixel_bytes)
        seen[t.y0:t.y0 + t.rows, t.x0:t.x1] += 1
    assert (seen == 1).all()


def _block_with_statistics(shortcut: str, cin: int, cout: int, stride: int, dtype=np.float32):
    """A BasicBlock whose batch norms have non-trivial weights, biases and running statistics."""
    block = nn.BasicBlock(cin, cout, stride, rng=np.random.default_rng(4), shortcut=shortcut).to(dtype)
    rng = np.random.default_rng(5)
    for m in block.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNormReLU2d, nn.BatchNormAddReLU2d)):
            c = m.num_features
            m.weight.data = backend.to_device(rng.uniform(0.5, 1.5, c).astype(dtype))
            m.bias.data = backend.to_device(rng.uniform(-0.3, 0.3, c).astype(dtype))
            m.running_mean = backend.to_device(rng.uniform(-0.5, 0.5, c).astype(dtype))
            m.running_var = backend.to_device(rng.uniform(0.5, 2.0, c).astype(dtype))
    return block.eval()


@pytest.mark.parametrize("shortcut,cin,cout,stride", [("projection", 4, 8, 2), ("pad", 4, 8, 2),
                                                      ("projection", 6, 6, 1)])
def test_a_block_in_inference_folds_batch_norm_into_its_convs(xp, monkeypatch, shortcut, cin, cout, stride):
    """Eval under no_grad on the host: each batch norm rides in its conv (its affine in the conv's weight and
    bias), with the unfolded layers' output to float32 rounding; with autograd on, in training or on a device
    the layers run one after the other."""
    from cnn_cifar.nn import fold
    block = _block_with_statistics(shortcut, cin, cout, stride)
    x = backend.to_device(_x((3, cin, 9, 9), 6, np.float32))
    calls = []
    real = nn.Conv2d.forward_affine
    monkeypatch.setattr(nn.Conv2d, "forward_affine", lambda self, *a: calls.append(self) or real(self, *a))
    with nn.no_grad():
        y = block(x)
    assert len(calls) == (2 if backend.is_host(x) else 0)
    monkeypatch.setattr(fold, "folds", lambda *a: False)
    with nn.no_grad():
        want = block(x)
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(want), rtol=2e-5, atol=2e-5)
    assert 0 < float((backend.to_numpy(y) == 0).mean()) < 1
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(nn.Conv2d, "forward_affine", lambda self, *a: calls.append(self) or real(self, *a))
    block(x)                                                    # autograd on: kept for backward, not folded
    with nn.no_grad(), nn.autocast():
        block(x)
    block.train()
    with nn.no_grad():
        block(x)
    assert calls == []


def test_a_folded_conv_matches_conv_then_affine_with_and_without_a_bias(xp):
    """Conv2d.forward_affine(x, scale, shift) is conv(x) * scale + shift per output channel (the bias scaled too)."""
    x = backend.to_device(_x((2, 3, 7, 7), 8, np.float64))
    rng = np.random.default_rng(9)
    scale, shift = (backend.to_device(rng.uniform(-1.5, 1.5, 5)) for _ in range(2))
    for bias in (False, True):
        conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias, rng=np.random.default_rng(3)).to(np.float64)
        s, t = backend.to_numpy(scale)[:, None, None], backend.to_numpy(shift)[:, None, None]
        want = backend.to_numpy(conv(x)) * s + t
        np.testing.assert_allclose(backend.to_numpy(conv.forward_affine(x, scale, shift)), want, rtol=1e-12,
                                   atol=1e-12)


def test_a_folded_batch_norm_refuses_a_residual_of_another_shape():
    bn = nn.BatchNormAddReLU2d(3).eval()
    y = nn.Conv2d(3, 3, 1)(_x((2, 3, 4, 4), 1, np.float32))
    with pytest.raises(ValueError, match="residual of the output's shape"):
        bn.finish_folded(y, _x((2, 3, 4, 5), 2, np.float32))
