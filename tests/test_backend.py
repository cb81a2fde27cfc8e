"""The backend shim: selection, env var, errors, host/device helpers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnn_cifar import backend


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


def test_auto_picks_something_that_runs_and_says_why():
    ok, reason = backend.cupy_available()
    assert backend.set_backend("auto") == ("cupy" if ok else "numpy")
    if not ok:
        assert f"; auto: {reason.split(' (')[0]})" in backend.describe()
    backend.set_backend("numpy")
    assert "auto" not in backend.describe()


def test_cupy_request_without_gpu_is_clear_error():
    ok, reason = backend.cupy_available()
    if ok:
        pytest.skip("a GPU is present; the error path cannot be exercised")
    with pytest.raises(backend.BackendError, match="backend 'cupy' requested but cannot run"):
        backend.set_backend("cupy")
    assert backend.name == "numpy"


def test_env_var_selects_backend_at_import():
    code = "from cnn_cifar import backend; print(backend.name)"
    env = {"CNN_CIFAR_BACKEND": "numpy", "PYTHONPATH": "src", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


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
    for name in ["activation.py", "dropout.py", "functional.py", "norm.py", "pooling.py", "loss.py"]:
        assert "import numpy" not in (nn_dir / name).read_text(), name
