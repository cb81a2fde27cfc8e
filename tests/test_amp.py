"""Mixed precision: autocast's dtypes layer by layer and through whole models (gradients close to float32's),
GradScaler's dynamic loss scaling (scale, unscale, skipped overflow steps, back-off, growth, state), a tiny
model trained under it, and train_cli --amp on the CuPy backend with exact resume."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.models import build_model
from cnn_cifar.optim import SGD, GradScaler
from cnn_cifar.training import train_step

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def _rel(a, b) -> float:
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _dt(a) -> np.dtype:
    return np.dtype(a.dtype)


# ------------------------------------------------------------------ the autocast region
def test_autocast_nests_restores_and_is_per_thread():
    assert nn.amp.autocast_dtype() is None
    seen = []
    with nn.autocast():
        assert nn.amp.autocast_dtype() == F16
        with nn.autocast(False):                         # disabled: the current mode stays
            assert nn.amp.autocast_dtype() == F16
        t = threading.Thread(target=lambda: seen.append(nn.amp.autocast_dtype()))
        t.start()
        t.join()
    assert seen == [None] and nn.amp.autocast_dtype() is None
    x = np.ones(3, np.float32)
    assert nn.amp.lower(x) is x
    with nn.autocast():
        assert nn.amp.lower(x).dtype == F16 and nn.amp.lower(np.arange(3)).dtype.kind == "i"


LAYERS = {
    "conv3x3": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv-stride2": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    "conv-dilated": lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False),
    "conv-grouped": lambda: nn.Conv2d(4, 6, 1, groups=2),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "batchnorm2d": lambda: nn.BatchNorm2d(4),
    "batchnorm-relu2d": lambda: nn.BatchNormReLU2d(4),
    "squeeze-excite": lambda: nn.SqueezeExcitation(4, 2, rng=np.random.default_rng(1)),
}


def _pair(make, seed=0):
    """The same layer twice (same weights): one run in float32, one under autocast."""
    nn.random.manual_seed(seed)
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_under_autocast_float16_io_float32_master_gradients(xp, name):
    """Each layer given the float16 activations it meets under autocast, against float32 on the same values."""
    a, b = _pair(LAYERS[name])
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((5, 4, 8, 8)).astype(np.float16))
    y32 = a(x.astype(xp.float32))
    with nn.autocast():
        y16 = b(x)
    assert _dt(y16) == F16 and _dt(y32) == F32
    assert _rel(y16, y32) < 5e-3
    dy = xp.asarray(rng.standard_normal(y32.shape).astype(np.float32))
    dx32 = a.backward(dy)
    dx16 = b.backward(dy.astype(xp.float16))
    assert _dt(dx16) == F16 and _rel(dx16, dx32) < 5e-3
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert _dt(pb.data) == F32 and _dt(pb.grad) == F32, k          # master weights and their gradients
        assert _rel(pb.grad, pa.grad) < 5e-3, k
    for (k, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert _dt(bb) == _dt(ba), k                                    # running statistics stay float32
        if _dt(ba).kind == "f":
            assert _rel(bb, ba) < 1e-3, k


def test_batchnorm_statistics_stay_float32_where_float16_would_overflow(xp):
    """Large activations (std 20 over 512 values per channel: their sum of squares, about 2e5, is beyond
    float16's 65504) normalise as in float32, because batch norm widens its input under autocast."""
    a, b = _pair(lambda: nn.BatchNorm2d(3))
    x = xp.asarray((20 * np.random.default_rng(5).standard_normal((8, 3, 8, 8))).astype(np.float16))
    y32 = a(x.astype(xp.float32))
    with nn.autocast():
        y16 = b(x)
    assert _dt(y16) == F16 and bool(xp.isfinite(y16).all()) and _rel(y16, y32) < 1e-3
    assert _rel(b.running_var, a.running_var) < 1e-5


def test_fused_batchnorm_keeps_a_float16_gate_and_matches_float32_under_autocast(xp):
    """BatchNormAddReLU2d()(x, r) under autocast: float16 out, its ReLU gate kept as that float16 output (not
    a float32 copy: half the memory until backward), gradients of x and r in float16 close to float32's."""
    a, b = _pair(lambda: nn.BatchNormAddReLU2d(3))
    rng = np.random.default_rng(6)
    x, r, dy = (xp.asarray(rng.standard_normal((4, 3, 5, 5)).astype(np.float16)) for _ in range(3))
    y32 = a(x.astype(xp.float32), r.astype(xp.float32))
    dx32, dr32 = a.backward(dy.astype(xp.float32))
    with nn.autocast():
        y16 = b(x, r)
    assert _dt(y16) == F16 and _dt(b._saved[1].gate) == F16 and _rel(y16, y32) < 2e-3
    dx16, dr16 = b.backward(dy)
    assert _dt(dx16) == F16 and _dt(dr16) == F16 and _rel(dx16, dx32) < 5e-3 and _rel(dr16, dr32) < 1e-3
    assert _rel(b.weight.grad, a.weight.grad) < 5e-3


def test_linear_and_loss_under_autocast(xp):
    a, b = _pair(lambda: nn.Linear(12, 5))
    rng = np.random.default_rng(3)
    x = xp.asarray(rng.standard_normal((7, 12)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 5, 7))
    crit = nn.SoftmaxCrossEntropy(label_smoothing=0.1)
    loss32 = crit(a(x), y)
    g32 = crit.backward()
    with nn.autocast():
        logits = b(x)
    assert _dt(logits) == F16
    loss16 = crit(logits, y)                            # upcast: a float32 loss and gradient
    g16 = crit.backward()
    assert _dt(g16) == F32 and abs(loss16 - loss32) < 2e-3
    a.backward(g32)
    dx = b.backward(g16)                                # float32 gradient into the float16 layer
    assert _dt(dx) == F16
    assert _rel(b.weight.grad, a.weight.grad) < 5e-3 and _rel(b.bias.grad, a.bias.grad) < 5e-3


@pytest.mark.parametrize("model", ["cnn", "resnet8", pytest.param("senet", marks=pytest.mark.slow),
                                   pytest.param("net-dilated", marks=pytest.mark.slow)])
def test_model_gradients_under_autocast_match_float32(xp, model):
    """A whole network under autocast: float16 logits, float32 parameter gradients within 25% of float32's and
    pointing the same way (cosine > 0.97), BN buffers float32. The error is float16's: each activation
    gradient is rounded to 11 bits, and batch norm's backward, which subtracts the gradient's mean and its
    projection on the normalised input, amplifies that rounding where little is left. PyTorch's autocast
    shows the same on the same networks at initialisation (batch 8, torch 2.13 CPU float16 autocast against
    float32: senet's stem conv 13.4% and cosine 0.991; ours 13.6%); a wrong cast or a lost term is off by
    the gradient's whole size."""
    a = build_model(model, seed=0, dropout=0.0)
    b = build_model(model, seed=0, dropout=0.0)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, 8))
    crit = nn.SoftmaxCrossEntropy()
    crit(a(x), y)
    a.backward(crit.backward())
    with nn.autocast():
        logits = b(x)
    assert _dt(logits) == F16
    crit(logits, y)
    b.backward(crit.backward() * 1024.0)                # as GradScaler would, then unscale
    total = np.sqrt(sum(float((backend.to_numpy(p.grad).astype(np.float64) ** 2).sum()) for p in a.parameters()))
    worst = {}
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert _dt(pb.grad) == F32, k
        g32 = backend.to_numpy(pa.grad).astype(np.float64).ravel()
        g16 = backend.to_numpy(pb.grad / 1024.0).astype(np.float64).ravel()
        # (biases before batch norm have a true gradient of 0: relative to the whole gradient there)
        worst[k] = np.linalg.norm(g16 - g32) / max(np.linalg.norm(g32), 1e-3 * total)
        if np.linalg.norm(g32) > 1e-3 * total:
            assert g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32)) > 0.97, k
    assert max(worst.values()) < 0.25, worst
    assert all(_dt(v) in (F32, np.dtype(np.int64)) for _, v in b.named_buffers())


# ------------------------------------------------------------------ GradScaler
def _tiny(xp):
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(6, 8, rng=rng), nn.ReLU(), nn.Linear(8, 3, rng=rng))
    x = xp.asarray(np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32))
    y = xp.asarray(np.arange(16) % 3)
    return model, x, y


def test_scaler_skips_overflowing_steps_backs_off_and_grows(xp):
    model, x, y = _tiny(xp)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.SoftmaxCrossEntropy()
    scaler = GradScaler(init_scale=2.0 ** 40, growth_interval=3)     # float16 overflows at 65504
    before = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
    train_step(model, crit, opt, x, y, scaler=scaler)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # skipped: weights untouched
    assert scaler.get_scale() == 2.0 ** 39 and scaler.skipped == 1 and opt.steps == 0
    for _ in range(40):                                               # backs off until the gradients fit
        train_step(model, crit, opt, x, y, scaler=scaler)
        if opt.steps:
            break
    assert opt.steps == 1 and scaler.skipped >= 2 and scaler.get_scale() == 2.0 ** (40 - scaler.skipped)
    calm = GradScaler(init_scale=scaler.get_scale() / 64, growth_interval=3)   # well below the overflow
    for i in range(3):
        assert calm.get_scale() == scaler.get_scale() / 64
        train_step(model, crit, opt, x, y, scaler=calm)
    assert opt.steps == 4 and calm.skipped == 0
    assert calm.get_scale() == scaler.get_scale() / 32                # grown after 3 good steps in a row
    state = scaler.state_dict()
    other = GradScaler()
    other.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert other.state_dict() == state


def test_scaled_autocast_steps_stay_close_to_plain_steps(xp):
    """Three SGD steps with autocast and a loss scale of 256 land within float16's error of three plain
    float32 steps (unscaling is exact: the scale is a power of two)."""
    m1, x, y = _tiny(xp)
    m2, _, _ = _tiny(xp)
    for m, scaler in ((m1, None), (m2, GradScaler(init_scale=256.0))):
        opt = SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(3):
            if scaler is None:
                train_step(m, nn.SoftmaxCrossEntropy(), opt, x, y)
            else:
                train_step(m, nn.SoftmaxCrossEntropy(), opt, x, y, scaler=scaler)
    a, b = m1.state_dict(), m2.state_dict()
    assert all(_rel(b[k], a[k]) < 2e-3 for k in a) and any(not np.array_equal(a[k], b[k]) for k in a)


def test_unscale_then_clip_sees_true_gradients(xp):
    model, x, y = _tiny(xp)
    opt = SGD(model.parameters(), lr=0.1)
    crit = nn.SoftmaxCrossEntropy()
    crit(model(x), y)
    model.backward(crit.backward())
    plain = [backend.to_numpy(p.grad).copy() for p in model.parameters()]
    opt.zero_grad()
    scaler = GradScaler(init_scale=1024.0)
    crit(model(x), y)
    model.backward(scaler.scale(crit.backward()))
    assert not scaler.unscale_(opt)
    for p, g in zip(model.parameters(), plain):
        np.testing.assert_allclose(backend.to_numpy(p.grad), g, rtol=1e-6, atol=1e-9)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    assert scaler.step(opt) and opt.steps == 1
    scaler.update()


def test_disabled_scaler_passes_through():
    model, x, y = _tiny(np)
    s = GradScaler(enabled=False)
    g = np.ones(3, np.float32)
    assert s.scale(g) is g and g[0] == 1.0 and s.get_scale() == 1.0
    with pytest.raises(ValueError):
        GradScaler(backoff_factor=1.5)


@pytest.mark.slow                   # float16 arithmetic on the CPU is emulated: 100 steps take ~10 s
def test_tiny_model_overfits_64_images_under_amp(xp):
    """SimpleCNN-sized training under autocast and loss scaling learns 64 random images by heart."""
    nn.random.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.GlobalAvgPool2d(),
                          nn.Linear(32, 10))
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((64, 3, 8, 8)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, 64))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler, crit = GradScaler(), nn.SoftmaxCrossEntropy()
    for _ in range(100):
        loss, logits = train_step(model, crit, opt, x, y, scaler=scaler)
    acc = float(backend.to_numpy((logits.argmax(axis=1) == y).mean()))
    assert loss < 0.3 and acc > 0.95, (loss, acc)


# ------------------------------------------------------------------ train_cli --amp
def _train_cupy(cifar_root, ckdir: str, *extra: str) -> int:
    from cnn_cifar.cli import train as train_cli
    return train_cli.main(["--backend", "cupy", "--model", "cnn", "--data", str(cifar_root), "--no-download",
                           "--checkpoint-dir", ckdir, "--log-dir", "log", "--limit-train", "128",
                           "--limit-test", "64", "--batch-size", "32", "--no-prefetch", "--dropout-rate", "0.5",
                           "--dropout-schedule", "none", "--lr-schedule", "none", "--warmup-epochs", "0", *extra])


def test_train_cli_amp_on_cupy_keeps_the_scale_and_resumes_exactly(cifar_root, tmp_path, monkeypatch, capsys):
    """--amp on the CuPy backend (real, or the stand-in) trains under autocast with a GradScaler: no 'needs
    CuPy' notice, amp in the settings and the checkpoint, the scale saved; 1 epoch + resume (without repeating
    --amp) to 2 equals 2 straight bit for bit, scale included; the weights stay float32."""
    pytest.importorskip("cupy")
    from cnn_cifar.training import load_checkpoint
    monkeypatch.chdir(tmp_path)
    try:
        assert _train_cupy(cifar_root, "straight", "--amp", "--epochs", "2") == 0
        out = capsys.readouterr().out
        assert "needs the CuPy backend" not in out
        assert [ln for ln in out.splitlines() if ln.startswith("optimizer ")][0].endswith(", mixed precision")
        assert _train_cupy(cifar_root, "split", "--amp", "--epochs", "1", "--quiet") == 0
        assert _train_cupy(cifar_root, "split", "--resume", "split/cnn_last.pkl", "--epochs", "2", "--quiet") == 0
    finally:
        backend.set_backend("numpy")
    a, b = (load_checkpoint(tmp_path / d / "cnn_last.pkl") for d in ("straight", "split"))
    assert a.args["amp"] is True and b.args["amp"] is True
    sa, sb = a.grad_scaler, b.grad_scaler
    assert sa == sb and sa["scale"] > 0 and sa["_growth_tracker"] + sa["skipped"] > 0
    assert all(a.state_dict[k].dtype == b.state_dict[k].dtype for k in a.state_dict)
    assert a.state_dict["conv1.weight"].dtype == np.float32
    assert all(np.array_equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.history[-1]["test_acc"] == b.history[-1]["test_acc"]
