"""Mixed precision: the autocast region, as ``torch.autocast("cuda", dtype=torch.float16)``.

Inside ``autocast()`` (per thread, like ``no_grad``) the layers that are matrix multiplies, Conv2d and
Linear, cast their input and a copy of their float32 weight to float16 and compute in float16: on a GPU
that is half the memory traffic and the tensor cores (CuPy's float16 ``matmul`` calls cuBLAS with float32
accumulation). Their outputs are float16, and the element-wise layers after them (ReLU, pooling, dropout,
residual sums, Squeeze-and-Excitation) keep that dtype. Batch norm computes in float32 (statistics, running
buffers, normalisation) and hands float16 back; the loss upcasts the logits to float32. The parameters,
their gradients and the optimizer stay float32 (the "master weights"): a layer's float16 weight gradient is
added into its float32 ``grad``.

Backward needs no autocast region: each layer's backward follows the dtypes its forward saved, and casts an
incoming gradient to them where they differ (the loss's float32 gradient entering the last Linear).

Small gradients underflow in float16; ``optim.GradScaler`` scales the loss gradient up before backward and
the parameter gradients down after it, skipping the steps whose gradients overflowed.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np

from ..backend import Array


class _AutocastMode(threading.local):
    dtype: np.dtype | None = None


_mode = _AutocastMode()


@contextlib.contextmanager
def autocast(enabled: bool = True, dtype: type = np.float16) -> Iterator[None]:
    """Within this block (in this thread) Conv2d and Linear compute in ``dtype``; ``enabled=False`` leaves
    the current mode as it is (so one code path serves both settings, as in PyTorch)."""
    prev = _mode.dtype
    if enabled:
        _mode.dtype = np.dtype(dtype)
    try:
        yield
    finally:
        _mode.dtype = prev


def autocast_dtype() -> np.dtype | None:
    """The dtype matrix multiplies compute in here, or None outside autocast."""
    return _mode.dtype


def like(a: Array, ref: Array) -> Array:
    """``a`` in ``ref``'s dtype (a copy only where they differ): a gradient meeting the dtype its layer's
    forward saved, or an output going back in the dtype its input came in."""
    return a if a.dtype == ref.dtype else a.astype(ref.dtype)


def lower(a: Array) -> Array:
    """``a`` in the autocast dtype when autocast is on and ``a`` is wider floating point; else ``a``."""
    dt = _mode.dtype
    if dt is None or a.dtype == dt or a.dtype.kind != "f":
        return a
    return a.astype(dt)
