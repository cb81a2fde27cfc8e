"""The one place that chooses between NumPy (CPU) and CuPy (NVIDIA GPU).

Layer code takes its array library from its inputs (``get_array_module(x)``), in the style of Chainer,
so the same code runs on both; the active backend (``backend.xp``, ``backend.name``) is only the default
for arrays created from nothing (new parameters, loader batches). This is the only module that imports
cupy. Importing it changes nothing in the host process: ``$CNN_CIFAR_BACKEND`` (NumPy when unset) is
applied on first use of ``xp`` or ``name``, unless ``set_backend`` chose first.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy

Array = Any
"""A numpy.ndarray or a cupy.ndarray (type hints only: both backends' arrays are accepted)."""

ENV_VAR = "CNN_CIFAR_BACKEND"
CHOICES = ("auto", "numpy", "cupy")

xp: ModuleType          # the active array module and its name: set on first use (module __getattr__ below)
name: str
_cupy: ModuleType | None = None
_auto_note: str = ""          # why "auto" did not pick CuPy (shown by describe())


class BackendError(RuntimeError):
    """The requested backend cannot run here (the message says why)."""


def _probe_cupy() -> tuple[ModuleType | None, str]:
    """Import CuPy and check a GPU is visible; return (module or None, reason)."""
    try:
        import cupy  # noqa: PLC0415 - the one allowed import of cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy imports but sees no GPU ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "CuPy imports but sees no GPU (device count 0)"
    try:
        # One element-wise kernel (compiled by NVRTC) and one cuBLAS matmul, read back: a driver without the
        # CUDA toolkit's compiler or libraries fails here, not in the middle of training.
        a = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)
        b = cupy.multiply(a, 2) + 1
        ok = float(cupy.matmul(a, b).sum()) == 56.0
    except Exception as exc:
        return None, f"CuPy sees a GPU but cannot run on it ({type(exc).__name__}: {str(exc)[:200]})"
    if not ok:
        return None, "CuPy sees a GPU but computed a wrong result in its self-test"
    return cupy, "ok"


def cupy_available() -> tuple[bool, str]:
    """Whether CuPy can run here, and if not, why."""
    mod, reason = _probe_cupy()
    return mod is not None, reason


def _use_numpy(auto_note: str = "") -> str:
    """Make NumPy the active backend; ``auto_note`` says why not CuPy."""
    global xp, name, _auto_note
    xp, name, _auto_note = numpy, "numpy", auto_note
    return name


def set_backend(choice: str = "auto") -> str:
    """Select ``numpy``, ``cupy`` or ``auto`` (CuPy if it imports and sees a GPU).

    Returns the name of the backend now in use. Raises BackendError when CuPy
    is asked for and cannot run, and ValueError for an unknown choice.
    """
    global xp, name, _cupy, _auto_note
    choice = (choice or "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"unknown backend {choice!r}; choose one of {', '.join(CHOICES)}")
    if choice == "numpy":
        return _use_numpy()
    mod, reason = _probe_cupy()
    if mod is None:
        if choice == "cupy":
            raise BackendError(f"backend 'cupy' requested but cannot run: {reason}")
        return _use_numpy(reason.split(" (")[0])
    _cupy, xp, name, _auto_note = mod, mod, "cupy", ""
    return name


def describe() -> str:
    """One line saying which backend is active (and the GPU, for CuPy)."""
    xp, name = _active()
    if name == "cupy":
        dev = xp.cuda.Device()
        props = xp.cuda.runtime.getDeviceProperties(dev.id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"backend: cupy on GPU {dev.id} ({gpu})"
    note = f"; auto: {_auto_note}" if _auto_note else ""
    return f"backend: numpy {numpy.__version__} (CPU{note})"


def get_array_module(*arrays: Array) -> ModuleType:
    """The array module (numpy or cupy) that owns the given arrays."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return numpy


def is_host(a: Array) -> bool:
    """True for a NumPy array: the array, not a global setting, decides which path (host or device) runs."""
    return isinstance(a, numpy.ndarray)


def is_device_array(a: Array) -> bool:
    """True for a CuPy array (False for NumPy arrays and for plain Python numbers)."""
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_device(a: Any, dtype: Any = None) -> Array:
    """Move a host array to the active backend (no copy when already there)."""
    out = _active()[0].asarray(a)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def to_numpy(a: Array) -> numpy.ndarray:
    """A host NumPy array for any backend array (or scalar)."""
    if is_device_array(a):
        return _cupy.asnumpy(a)
    return numpy.asarray(a)


def synchronize() -> None:
    """Wait for queued GPU work (a no-op on NumPy); benchmarks call it before reading clocks."""
    xp, name = _active()
    if name == "cupy":
        xp.cuda.get_current_stream().synchronize()


def select_gpu(local_rank: int) -> int | None:
    """Make GPU ``local_rank mod count`` CuPy's current device, before anything allocates on the default
    one (one GPU per data-parallel rank); returns its index, or None where CuPy is missing or sees no GPU."""
    try:
        import cupy  # noqa: PLC0415
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return None
    if count < 1:
        return None
    cupy.cuda.Device(local_rank % count).use()
    return local_rank % count


def nccl() -> ModuleType:
    """CuPy's NCCL binding (``cupy.cuda.nccl``); ImportError where CuPy or its NCCL is missing."""
    from cupy.cuda import nccl as module  # noqa: PLC0415
    return module


def cublas() -> ModuleType:
    """CuPy's cuBLAS wrappers (``cupy.cublas``: ``gemm`` with ``beta`` accumulates into its output), which
    ``import cupy`` does not load."""
    import cupy.cublas as module  # noqa: PLC0415
    return module


def current_stream_ptr() -> int:
    """The raw handle of CuPy's current stream (what NCCL calls are queued on)."""
    return _active()[0].cuda.get_current_stream().ptr


def _init_from_env() -> None:
    """Apply CNN_CIFAR_BACKEND (NumPy when unset); a bad value falls back to NumPy here and is reported by
    whoever calls set_backend with it later (the CLIs do)."""
    try:
        set_backend(os.environ.get(ENV_VAR, "").strip() or "numpy")
    except (ValueError, BackendError):
        _use_numpy()


def _active() -> tuple[ModuleType, str]:
    """The active backend (module, name), chosen from the environment if nothing has chosen it yet."""
    if "name" not in globals():
        _init_from_env()
    return xp, name


def __getattr__(attr: str) -> Any:
    """``backend.xp`` and ``backend.name`` before any choice: make it from the environment (PEP 562; once
    they are set, Python finds them without calling this)."""
    if attr in ("xp", "name"):
        return _active()[attr == "name"]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
