"""The library's structural rules: one backward-state mechanism for every layer, no side effects on import,
the model registry (a new model is one entry), borrowed buffers, and decisions taken from the arrays."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend, nn, runtime
from cnn_cifar.models import Recipe, build_model, list_models, register, unregister
from cnn_cifar.nn import im2col

from conftest import SRC, STANDIN, run_python, subprocess_env

LAYERS = {
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    "Conv2d-strided": (lambda: nn.Conv2d(2, 3, 3, stride=2), (2, 2, 5, 5)),
    "Linear": (lambda: nn.Linear(4, 3), (2, 4)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), (2, 2, 3, 3)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4), (3, 4)),
    "BatchNormReLU2d": (lambda: nn.BatchNormReLU2d(2), (2, 2, 3, 3)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (2, 2, 4, 4)),
    "GlobalAvgPool2d": (lambda: nn.GlobalAvgPool2d(), (2, 2, 4, 4)),
    "ReLU": (lambda: nn.ReLU(), (2, 3)),
    "ReLU-4d": (lambda: nn.ReLU(), (2, 2, 3, 3)),
    "Dropout": (lambda: nn.Dropout(0.5), (2, 3)),
    "Dropout2d": (lambda: nn.Dropout2d(0.5), (2, 2, 3, 3)),
    "Flatten": (lambda: nn.Flatten(), (2, 2, 3, 3)),
}
NO_FORWARD = r"backward called without a forward that kept what it needs"


def _x(shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_without_forward_is_the_same_clear_error_for_every_layer(name):
    make, shape = LAYERS[name]
    layer = make()
    y = layer(_x(shape))
    dy = np.ones_like(y)
    layer.backward(dy)                              # the saved values are handed back once ...
    with pytest.raises(RuntimeError, match=NO_FORWARD):
        layer.backward(dy)                          # ... so a second backward is the same error
    with pytest.raises(RuntimeError, match=NO_FORWARD):
        make().backward(dy)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_nothing_is_kept_under_no_grad(name, training):
    make, shape = LAYERS[name]
    layer = make().train(training)
    with nn.no_grad():
        layer(_x(shape))
    assert not layer.has_saved
    with pytest.raises(RuntimeError, match=NO_FORWARD):
        layer.backward(np.ones(1, np.float32))
    layer(_x(shape))                                # with gradients enabled, the state is kept
    assert layer.has_saved


def test_the_loss_keeps_its_gradient_only_when_gradients_are_enabled():
    crit = nn.SoftmaxCrossEntropy()
    logits, y = _x((4, 3)), np.array([0, 1, 2, 0])
    with nn.no_grad():
        crit(logits, y)
    with pytest.raises(RuntimeError, match=NO_FORWARD):
        crit.backward()
    crit(logits, y)
    assert crit.backward().shape == (4, 3)


def test_whole_models_keep_nothing_under_no_grad():
    for name in ("cnn", "resnet8"):
        m = build_model(name)
        with nn.no_grad():
            m(_x((2, 3, 32, 32)))
        assert not any(layer.has_saved for layer in m.modules()), name


# ------------------------------------------------------------------ import has no side effects
IMPORT_PROBE = r'''
import ctypes, importlib, pkgutil, sys
calls = []
class SpyLib:
    def __init__(self, lib): self._lib = lib
    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if name != "mallopt":
            return fn
        def spy(*args):
            calls.append(args)
            return fn(*args)
        return spy
real_cdll = ctypes.CDLL
ctypes.CDLL = lambda *a, **k: SpyLib(real_cdll(*a, **k))
import matplotlib
before = matplotlib.rcParams._get("backend")
import cnn_cifar
for mod in pkgutil.walk_packages(cnn_cifar.__path__, "cnn_cifar."):
    importlib.import_module(mod.name)
print("mallopt calls after import:", len(calls))
print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
print("backend unchanged:", matplotlib.rcParams._get("backend") == before)
print("cupy imported:", "cupy" in sys.modules)
from cnn_cifar import runtime
runtime.enable()
print("mallopt calls after enable:", len(calls))
'''


def test_importing_the_library_changes_nothing_in_the_process(tmp_path):
    """Not the allocator, not matplotlib's backend, and no CuPy import (with CNN_CIFAR_BACKEND=auto and the
    stand-in importable: the environment is applied on first use of the backend, not at import)."""
    env = subprocess_env(CNN_CIFAR_BACKEND="auto", PYTHONPATH=os.pathsep.join([str(STANDIN), str(SRC)]))
    p = run_python("-c", IMPORT_PROBE, cwd=tmp_path, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "cupy imported: False" in lines
    assert "mallopt calls after import: 0" in lines
    assert "pyplot imported: False" in lines
    assert "backend unchanged: True" in lines
    assert "mallopt calls after enable: 3" in lines       # the explicit call does tune the allocator


# ------------------------------------------------------------------ the registry
class _Tiny(nn.Sequential):
    def __init__(self, num_classes=10, dropout=0.0, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        super().__init__(nn.Conv2d(3, 4, 3, stride=2, rng=rng, dtype=dtype), nn.ReLU(), nn.GlobalAvgPool2d(),
                         nn.Dropout(dropout), nn.Linear(4, num_classes, rng=rng, dtype=dtype))


@pytest.fixture
def tiny_model():
    register("tiny", _Tiny, Recipe(lr=0.0123, batch_size=16, epochs=1, dropout_rate=0.25, warmup_epochs=0.0))
    try:
        yield "tiny"
    finally:
        unregister("tiny")


def test_a_new_model_is_one_registry_entry(tiny_model, cifar_root, tmp_path, monkeypatch, capsys):
    """Registering builder + recipe is all it takes: build_model, train_cli (recipe as defaults) and
    test_cli (rebuilt from the checkpoint) all know the model."""
    from cnn_cifar.cli import test as test_cli
    from cnn_cifar.cli import train as train_cli
    from cnn_cifar.training import load_checkpoint
    assert "tiny" in list_models()
    assert build_model("tiny").config == {"name": "tiny", "num_classes": 10, "dropout": 0.25}
    monkeypatch.chdir(tmp_path)
    rc = train_cli.main(["--model", "tiny", "--data", str(cifar_root), "--no-download", "--limit-train", "64",
                         "--limit-test", "32", "--checkpoint-dir", "ck", "--log-dir", "log", "--quiet",
                         "--no-prefetch"])
    assert rc == 0, capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "ck" / "tiny_last.pkl", "tiny")
    assert ck.args["lr"] == 0.0123 and ck.args["batch_size"] == 16 and ck.args["epochs"] == 1
    assert ck.epoch == 1 and ck.schedule["dropout_p"] == 0.25
    rc = test_cli.main(["--resume", "ck/tiny_best.pkl", "--data", str(cifar_root), "--no-download", "--quiet",
                        "--limit-test", "32"])
    assert rc == 0
    assert "model tiny (ck/tiny_best.pkl, epoch 1)" in capsys.readouterr().out


def test_registering_a_name_twice_is_refused(tiny_model):
    with pytest.raises(ValueError, match="already registered"):
        register("tiny", _Tiny, Recipe())


# ------------------------------------------------------------------ buffers and array-driven decisions
def test_a_borrowed_buffer_cannot_be_borrowed_again_until_returned():
    with runtime.workspace(np, "probe", (4, 4), np.float32) as a:
        with pytest.raises(runtime.BufferInUse, match="'probe' is already borrowed"):
            with runtime.workspace(np, "probe", (2,), np.float32):
                pass
        a[...] = 1
    with runtime.workspace(np, "probe", (2,), np.float32) as b:       # returned: lendable again, same memory
        assert np.shares_memory(a, b)
    x = np.ones((2, 3, 3, 1), np.float32)
    with runtime.padded(x, 1, 1):
        with pytest.raises(runtime.BufferInUse, match="padding buffer"):
            with runtime.padded(x, 1, 1):
                pass


class _DeviceLike:
    """Stands in for a device array: not a numpy.ndarray, with the attributes the decisions read."""
    shape = (64, 100)
    nbytes = 1 << 30


def test_parallel_and_tiling_decisions_follow_the_array_not_the_global_backend(monkeypatch):
    monkeypatch.setattr(runtime, "THREADS", 4)
    monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
    assert backend.name == "numpy"
    calls = []
    runtime.by_channel(lambda c0, c1: calls.append((c0, c1)), _DeviceLike())
    assert calls == [(0, 64)]                                   # a device array: one call, this thread
    calls.clear()
    runtime.by_channel(lambda c0, c1: calls.append((c0, c1)), np.zeros((64, 100), np.float32))
    assert sorted(calls) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert im2col.tiles(32, 32, 1 << 20, _DeviceLike()) == [im2col.Tile(0, 32, 0, 32)]
    assert len(im2col.tiles(32, 32, 1 << 20, np.empty(0))) > 1
    assert runtime.in_runs(lambda run: len(run), list(range(40)), _DeviceLike()) == [40]


def _blas_threads_seen() -> int:
    return max(lib.num_threads for lib in runtime._blas_controllers())


@pytest.mark.skipif(not runtime.can_pin_blas(), reason="threadpoolctl cannot inspect this NumPy's BLAS")
@pytest.mark.parametrize("items", [1, 40])
def test_host_runs_never_wake_the_blas_threads(monkeypatch, items):
    """One run or several, the work inside sees single-threaded BLAS, and the count is restored after: a call
    on BLAS's own threads leaves them spinning for a core that our runs need."""
    from threadpoolctl import threadpool_limits
    monkeypatch.setattr(runtime, "THREADS", 2)
    with threadpool_limits(2, user_api="blas"):
        seen = runtime.in_runs(lambda run: _blas_threads_seen(), list(range(items)), np.zeros(4))
        assert seen == [1] * len(seen) and len(seen) == (1 if items == 1 else 2)
        assert _blas_threads_seen() == 2


@pytest.mark.parametrize("m,k,n", [(64, 1800, 128), (300, 40, 7), (5, 3, 2), (1, 64, 1)])
def test_matmul_on_the_library_threads_matches_numpy(monkeypatch, xp, m, k, n):
    """Split by rows (m >= n) or by columns, on 3 threads whatever the size; the same numbers as a @ b."""
    monkeypatch.setattr(runtime, "THREADS", 3)
    monkeypatch.setattr(runtime, "PARALLEL_MIN_MACS", 0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k)).T        # b a transposed view, as Linear's
    got = runtime.matmul(xp.asarray(a), xp.asarray(b))
    assert type(got) is type(xp.asarray(a)) and got.shape == (m, n)
    np.testing.assert_allclose(backend.to_numpy(got), a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lead,m,k,n", [((1,), 8, 9601, 27), ((), 3, 1000, 2), ((2,), 16, 777, 27), ((1,), 32, 64, 32),
                                         ((1,), 5, 7, 3)])
def test_a_product_too_small_to_release_the_gil_gives_a_at_b(xp, lead, m, k, n):
    """Cut along its inner side into a batch of pieces (plus a remainder) or left whole: a @ b either way."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((*lead, m, k)), rng.standard_normal((*lead, n, k)).swapaxes(-1, -2)
    got = runtime.matmul_released(xp.asarray(a), xp.asarray(b))
    assert got.shape == (*lead, m, n)
    np.testing.assert_allclose(backend.to_numpy(got), a @ b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(3, 1000), (2, 3, 5), (7,), ()])
def test_relu_against_a_row_of_zeros_is_maximum_with_zero(xp, shape):
    """The same bits as maximum(x, 0), NaN and infinities included, into out or a new array; the shared row of
    zeros stays zeros and read-only."""
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    if x.size >= 3:
        x.flat[:3] = [np.nan, -np.inf, np.inf]
    want = np.maximum(x, 0)
    got = backend.to_numpy(runtime.relu(xp.asarray(x)))
    np.testing.assert_array_equal(got, want)
    out = xp.asarray(x.copy())
    assert runtime.relu(out, out=out) is out
    np.testing.assert_array_equal(backend.to_numpy(out), want)
    for (_, value), z in runtime._rows.items():
        assert not z.flags.writeable and (z == value).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,transposed", [((3, 1000), False), ((1, 7), False), ((5, 40), True)])
def test_row_sums_and_dots_on_blas_match_numpy(xp, dtype, shape, transposed):
    """Per-row sums and dot products (batch norm's reductions), contiguous rows or a transposed view, in the
    array's dtype and to its precision."""
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(shape[::-1] if transposed else shape).astype(dtype) + 0.5 for _ in range(2))
    if transposed:
        a, b = a.T, b.T
    sums, dots = runtime.row_sums(xp.asarray(a)), runtime.row_dots(xp.asarray(a), xp.asarray(b))
    assert sums.dtype == dots.dtype == dtype and sums.shape == dots.shape == (shape[0],)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(backend.to_numpy(sums), a.astype(np.float64).sum(axis=1), rtol=tol)
    np.testing.assert_allclose(backend.to_numpy(dots), (a.astype(np.float64) * b).sum(axis=1), rtol=tol)


def test_a_parallel_section_returns_in_order_and_raises_what_a_call_raised():
    """Results in call order, each call on its own thread (the first on the caller's); a pool thread's
    exception is raised in the caller once every call has ended, and the pool serves the next section."""
    import threading
    names = [None] * 3

    def call(k):
        def run():
            names[k] = threading.current_thread().name
            return k * 10
        return run
    assert runtime._share([call(0), call(1), call(2)]) == [0, 10, 20]
    assert names[0] == threading.current_thread().name and len(set(names)) == 3
    ended = []

    def fails():
        raise ValueError("in a pool thread")
    with pytest.raises(ValueError, match="in a pool thread"):
        runtime._share([lambda: ended.append("first"), fails])
    assert ended == ["first"]
    assert runtime._share([lambda: 1, lambda: 2]) == [1, 2]


def test_a_section_interrupted_while_waiting_leaves_a_pool_that_still_works(monkeypatch):
    """Ctrl-C while the caller waits for a pool thread: the interrupt propagates, the threads that may still be
    running are dropped, and the next section gets right results from fresh threads."""
    real = runtime._Worker.outcome
    interrupted = []

    def interrupt_once(self):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(runtime._Worker, "outcome", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        runtime._share([lambda: 1, lambda: 2])
    assert runtime._workers == []
    assert runtime._share([lambda: 3, lambda: 4]) == [3, 4]


def test_a_second_thread_runs_its_section_serially_while_the_pool_is_busy():
    """Two threads asking for the pool at once (a user's thread beside training): the second runs its calls
    itself, in order, rather than waiting or sharing the pool's threads."""
    import threading
    release, inside = threading.Event(), threading.Event()

    def hold():
        inside.set()
        release.wait(10)
        return "held"
    t = threading.Thread(target=lambda: runtime._share([hold, lambda: None]))
    t.start()
    assert inside.wait(10)
    me = threading.current_thread().name
    seen = []
    assert runtime._share([lambda: seen.append(threading.current_thread().name) or 1,
                           lambda: seen.append(threading.current_thread().name) or 2]) == [1, 2]
    release.set()
    t.join(10)
    assert seen == [me, me]


def test_a_small_conv_still_gets_two_tiles_per_core(monkeypatch):
    """Below TILE_BYTES a conv is cut into 2 * THREADS even tiles (so runs go to every core), never below
    MIN_TILE_BYTES; a tiny one stays one tile."""
    monkeypatch.setattr(runtime, "THREADS", 2)
    pixel = 3 * 9 * 64 * 4                                           # SimpleCNN's first conv: 6.2 MB of columns
    ts = im2col.tiles(30, 30, pixel, np.empty(0))
    assert len(ts) >= 4 and max(t.rows for t in ts) - min(t.rows for t in ts) <= 1
    assert all(t.rows * 30 * pixel >= im2col.MIN_TILE_BYTES for t in ts)
    assert len(im2col.tiles(16, 16, 16 * 128 * 4, np.empty(0))) == 4    # ResNet-32's 1x1 projection: 2 MB
    assert im2col.tiles(8, 8, 288, np.empty(0)) == [im2col.Tile(0, 8, 0, 8)]


def test_train_step_leaves_parameters_alone_on_a_non_finite_loss():
    from cnn_cifar.optim import SGD
    from cnn_cifar.training import NonFiniteLoss, train_step
    model = build_model("cnn", dropout=0.0)
    opt = SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    x = _x((4, 3, 32, 32))
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteLoss, match="loss became (nan|inf)"), np.errstate(invalid="ignore", over="ignore"):
        train_step(model, nn.SoftmaxCrossEntropy(), opt, x, np.array([0, 1, 2, 3]))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_every_deliberate_bug_of_the_mutation_check_still_applies():
    """Each entry of tools/mutation_check.py names code that occurs exactly once in its file: a refactor that
    moves the code fails here, in the suite, instead of part-way through CI's mutation run."""
    import importlib.util
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("mutation_check", root / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [(what, path) for what, path, old, _, _ in module.MUTATIONS if (root / path).read_text().count(old) != 1]
    assert stale == []
