"""The backend shim: selection, env var, errors, host/device helpers."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar import backend

from conftest import SRC, run_python, subprocess_env


def test_numpy_backend_and_helpers():
    assert backend.set_backend("numpy") == "numpy"
    assert backend.xp is np
    a = backend.to_device([1, 2, 3], np.float32)
    assert a.dtype == np.float32 and backend.get_array_module(a) is np
    assert isinstance(backend.to_numpy(a), np.ndarray)
    assert "numpy" in backend.describe()


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backend.set_backend("tpu")


def test_only_backend_imports_cupy():
    """No module but backend.py may import cupy (the design's one place for the choice)."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "src"
    offenders = [p for p in root.rglob("*.py") if p.name != "backend.py" and "import cupy" in p.read_text()]
    assert not offenders, offenders


def test_layers_do_not_import_numpy_for_math():
    """Layer modules take xp from their inputs; numpy appears only for host-side init/dtypes."""
    import pathlib
    nn_dir = pathlib.Path(__file__).resolve().parents[1] / "src" / "cnn_cifar" / "nn"
    for name in ["activation.py", "dropout.py", "layout.py", "im2col.py", "norm.py", "pooling.py", "loss.py"]:
        assert "import numpy" not in (nn_dir / name).read_text(), name


# ------------------------------------------------------------------ selection with a stand-in CuPy
NOT_IMPORTABLE = "CuPy is not importable (ModuleNotFoundError: No module named 'cupy')"
NO_GPU = "CuPy imports but sees no GPU (CUDARuntimeError: cudaErrorNoDevice: no CUDA-capable device is detected)"


def _fake_cupy(device_count: int | Exception = 1) -> types.ModuleType:
    """Just enough of CuPy for backend.py: ndarray, get_array_module, asnumpy, cuda.runtime (device count and
    properties) and cuda.Device (for describe())."""
    mod = types.ModuleType("cupy")
    mod.ndarray = type("ndarray", (), {})
    mod.get_array_module = lambda *arrays: mod
    mod.asnumpy = np.asarray
    for name in ("arange", "multiply", "matmul", "float32"):     # what the probe's self-test runs
        setattr(mod, name, getattr(np, name))

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count,
                                    getDeviceProperties=lambda i: {"name": b"Fake GPU 9000"})
    mod.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: types.SimpleNamespace(id=0))
    return mod


@pytest.fixture
def isolated(monkeypatch):
    """Let a test switch the backend module's globals freely: they are put back afterwards (including
    _cupy, which set_backend('numpy') leaves pointing at the last CuPy module used)."""
    for attr in ("xp", "name", "_cupy", "_auto_note"):
        monkeypatch.setattr(backend, attr, getattr(backend, attr))
    monkeypatch.setattr(backend, "_cupy", None)
    return monkeypatch


def test_auto_picks_cupy_when_the_probe_succeeds(isolated):
    """auto with a working CuPy: the backend is cupy, xp is that module, device arrays are recognised and
    describe() names the GPU; cupy_available() reports (True, 'ok')."""
    fake = _fake_cupy()
    isolated.setattr(backend, "_probe_cupy", lambda: (fake, "ok"))
    assert backend.cupy_available() == (True, "ok")
    assert backend.set_backend("auto") == "cupy"
    assert backend.name == "cupy" and backend.xp is fake
    assert backend.is_device_array(fake.ndarray()) and not backend.is_device_array(np.zeros(1))
    assert backend.describe() == "backend: cupy on GPU 0 (Fake GPU 9000)"
    assert backend.set_backend("numpy") == "numpy" and backend.xp is np
    assert backend.describe() == f"backend: numpy {np.__version__} (CPU)"


@pytest.mark.parametrize("reason, short", [(NOT_IMPORTABLE, "CuPy is not importable"),
                                           (NO_GPU, "CuPy imports but sees no GPU")])
def test_auto_falls_back_to_numpy_and_says_why(reason, short, isolated):
    """auto with a failing probe: NumPy, and describe() carries the reason (without its parenthesised
    detail); an explicit numpy afterwards drops the note."""
    isolated.setattr(backend, "_probe_cupy", lambda: (None, reason))
    assert backend.cupy_available() == (False, reason)
    assert backend.set_backend("auto") == "numpy"
    assert backend.xp is np
    assert backend.describe() == f"backend: numpy {np.__version__} (CPU; auto: {short})"
    backend.set_backend("numpy")
    assert backend.describe() == f"backend: numpy {np.__version__} (CPU)"


@pytest.mark.parametrize("reason", [NOT_IMPORTABLE, NO_GPU])
def test_cupy_request_fails_with_the_probe_reason(reason, isolated):
    """An explicit cupy request that cannot run raises BackendError with the full reason, and the active
    backend stays NumPy."""
    isolated.setattr(backend, "_probe_cupy", lambda: (None, reason))
    with pytest.raises(backend.BackendError) as info:
        backend.set_backend("cupy")
    assert str(info.value) == f"backend 'cupy' requested but cannot run: {reason}"
    assert backend.name == "numpy" and backend.xp is np


def test_choice_is_case_insensitive_and_empty_means_auto(isolated):
    """'CuPy' selects cupy; '' and None mean auto."""
    fake = _fake_cupy()
    isolated.setattr(backend, "_probe_cupy", lambda: (fake, "ok"))
    assert backend.set_backend("CuPy") == "cupy"
    backend.set_backend("numpy")
    assert backend.set_backend("") == "cupy"
    backend.set_backend("numpy")
    assert backend.set_backend(None) == "cupy"


def _driver_only() -> types.ModuleType:
    """A GPU is visible but kernels cannot be compiled (cupy-cuda12x without the toolkit on a driver-only host)."""
    mod = _fake_cupy(1)

    def multiply(*args):
        raise RuntimeError("nvrtc: libnvrtc.so.12 not found")
    mod.multiply = multiply
    return mod


def _wrong_results() -> types.ModuleType:
    mod = _fake_cupy(1)
    mod.matmul = lambda a, b: np.zeros_like(a)
    return mod


@pytest.mark.parametrize("module, expected", [
    (None, "CuPy is not importable (ModuleNotFoundError: import of cupy halted"),
    (_fake_cupy(0), "CuPy imports but sees no GPU (device count 0)"),
    (_fake_cupy(RuntimeError("cudaErrorNoDevice")), "CuPy imports but sees no GPU (RuntimeError: cudaErrorNoDevice)"),
    (_fake_cupy(1), "ok"),
    (_driver_only(), "CuPy sees a GPU but cannot run on it (RuntimeError: nvrtc: libnvrtc.so.12 not found"),
    (_wrong_results(), "CuPy sees a GPU but computed a wrong result in its self-test"),
], ids=["import-fails", "zero-devices", "device-query-fails", "one-device", "driver-only", "wrong-results"])
def test_probe_reasons(module, expected, monkeypatch):
    """The real probe with a stand-in 'cupy' in sys.modules (None makes the import fail): each outcome gives
    its reason, and only a visible device returns the module."""
    monkeypatch.setitem(sys.modules, "cupy", module)
    mod, reason = backend._probe_cupy()
    assert reason.startswith(expected), reason
    assert (mod is module) if expected == "ok" else (mod is None)


# ------------------------------------------------------------------ CNN_CIFAR_BACKEND at import
FAKE_CUPY = """\"\"\"A stand-in CuPy for tests: enough for cnn_cifar.backend's probe and set_backend.\"\"\"
import os as _os
import numpy as _np


class ndarray:
    pass


def get_array_module(*arrays):
    return _np


arange, multiply, matmul, float32 = _np.arange, _np.multiply, _np.matmul, _np.float32   # the probe's self-test


def asnumpy(a):
    return _np.asarray(a)


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return int(_os.environ.get("FAKE_CUPY_DEVICES", "1"))


class cuda:
    runtime = _Runtime
"""


@pytest.fixture(scope="module")
def fake_cupy_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fake_cupy")
    (d / "cupy").mkdir()
    (d / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    return d


PROBE = ("import sys; from cnn_cifar import backend; imported = 'cupy' in sys.modules; "
         "print(imported, backend.name, backend.xp.__name__, 'cupy' in sys.modules, "
         "getattr(backend.xp, '__file__', '').startswith(sys.argv[1]))")


@pytest.mark.parametrize("value, devices, expected", [
    (None, "1", "numpy numpy False False"),        # unset: NumPy, and CuPy is not even imported
    ("", "1", "numpy numpy False False"),
    ("numpy", "1", "numpy numpy False False"),
    ("auto", "1", "cupy cupy True True"),
    (" AUTO ", "1", "cupy cupy True True"),
    ("cupy", "1", "cupy cupy True True"),
    ("tpu", "1", "numpy numpy False False"),       # a bogus value falls back to NumPy on first use
    ("cupy", "0", "numpy numpy True False"),       # cupy asked for but no GPU: NumPy, no crash
    ("auto", "0", "numpy numpy True False"),
], ids=["unset", "empty", "numpy", "auto", "AUTO-spaces", "cupy", "bogus", "cupy-no-gpu", "auto-no-gpu"])
def test_env_var_selects_backend_on_first_use_not_at_import(value, devices, expected, fake_cupy_dir):
    """In a fresh interpreter whose path finds a stand-in 'cupy' (one visible GPU, or none) before anything
    else, importing the backend imports no CuPy whatever CNN_CIFAR_BACKEND says; the first use of
    ``backend.name`` applies it. Unset means NumPy (not auto: with a GPU visible, auto would pick cupy, so
    this catches a changed default), auto and cupy pick the stand-in."""
    env = subprocess_env(CNN_CIFAR_BACKEND=value, FAKE_CUPY_DEVICES=devices,
                         PYTHONPATH=os.pathsep.join([str(fake_cupy_dir), str(SRC)]))
    out = run_python("-c", PROBE, str(fake_cupy_dir), env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"False {expected}"
