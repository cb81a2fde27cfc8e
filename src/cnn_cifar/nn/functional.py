"""Array helpers shared by the layers: layout views, padding, im2col and col2im.

Layers keep 4-D activations as NCHW *views* of buffers laid out (C, N, H, W) in memory.
``cnhw(x)`` returns that (C, N, H, W) view (free when x came from one of our layers), so im2col
copies whole contiguous rows, the conv matmul writes its output without a transpose, and
per-channel reductions (batch norm) run along contiguous memory.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .. import backend
from ..backend import get_array_module

# ---------------------------------------------------------------------------------------------------
# Scratch workspace. im2col columns and their gradients are kh*kw times larger than an activation and
# live only inside one layer call. Allocating them fresh costs a page fault per 4 KiB every time (glibc
# serves blocks above 32 MiB with new mmap pages), so each thread keeps one growing buffer per role and
# hands out views of it. A view is valid until the next scratch() call for the same role.
_local = threading.local()


def scratch(xp: Any, role: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array of ``shape`` backed by this thread's reusable buffer for ``role``."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    n = 1
    for d in shape:
        n *= int(d)
    key = (role, xp.__name__, xp.dtype(dtype).str)
    buf = pool.get(key)
    if buf is None or buf.size < n:
        buf = pool[key] = xp.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (e.g. after training, before a long evaluation elsewhere)."""
    _local.pool = {}


# ---------------------------------------------------------------------------------------------------
# Channel-parallel helper. NumPy's copies and ufuncs release the GIL, so memory-bound passes over a
# (C, ...) array split by channel into one chunk per core run in parallel threads. GPU arrays and small
# arrays run in the calling thread.
_THREADS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                      int(os.environ.get("CNN_CIFAR_THREADS", "0")) or 64))
_PARALLEL_MIN_BYTES = 4 << 20
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="cnn-cifar")
    return _executor


def by_channel(fn: Callable[[int, int], None], channels: int, nbytes: int) -> None:
    """Call fn(c0, c1) over chunks of range(channels), in parallel on the NumPy backend when worth it."""
    chunks = min(_THREADS, channels)
    if chunks < 2 or nbytes < _PARALLEL_MIN_BYTES or backend.name != "numpy" \
            or threading.current_thread().name.startswith("cnn-cifar"):
        fn(0, channels)
        return
    bounds = [channels * k // chunks for k in range(chunks + 1)]
    futures = [_pool().submit(fn, bounds[k], bounds[k + 1]) for k in range(1, chunks)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


def cnhw(x: Any) -> Any:
    """(N, C, H, W) array -> its (C, N, H, W) view."""
    return x.transpose(1, 0, 2, 3)


def nchw(x: Any) -> Any:
    """(C, N, H, W) array -> its (N, C, H, W) view."""
    return x.transpose(1, 0, 2, 3)


def rows(x: Any) -> Any:
    """(N, C, H, W) -> (C, N*H*W) matrix; a view when x is laid out channel-major, else one copy."""
    n, c, h, w = x.shape
    return cnhw(x).reshape(c, n * h * w)


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution/pool along one axis."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pad_cnhw(xc: Any, ph: int, pw: int, value: float = 0.0) -> Any:
    """Pad the two spatial axes of a (C, N, H, W) array; returns it unchanged when no padding."""
    if ph == 0 and pw == 0:
        return xc
    xp = get_array_module(xc)
    c, n, h, w = xc.shape
    out = xp.empty((c, n, h + 2 * ph, w + 2 * pw), dtype=xc.dtype)

    def fill(c0: int, c1: int) -> None:
        o = out[c0:c1]
        o[:, :, :ph] = value
        o[:, :, ph + h:] = value
        o[:, :, ph:ph + h, :pw] = value
        o[:, :, ph:ph + h, pw + w:] = value
        o[:, :, ph:ph + h, pw:pw + w] = xc[c0:c1]
    by_channel(fill, c, out.nbytes)
    return out


def window(i: int, j: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> tuple[slice, slice]:
    """The strided slices of the padded input seen by kernel tap (i, j)."""
    return (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _valid(size: int, out: int, k_off: int, s: int, p: int) -> tuple[int, int]:
    """Output range [lo, hi) whose input index o*s + k_off - p falls inside [0, size)."""
    lo = max(0, -(-(p - k_off) // s))
    hi = min(out, (size - 1 + p - k_off) // s + 1)
    return lo, max(lo, hi)


def im2col(x: Any, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int,
           ph: int = 0, pw: int = 0, role: str = "cols") -> Any:
    """Unpadded (C, N, H, W) -> columns (C*kh*kw, N*ho*wo) for zero padding (ph, pw).

    One kh*kw loop of slice copies straight from x into the ``role`` scratch buffer (valid until the
    next im2col with that role in this thread); only the border strips that fall in the padding are
    zeroed, so no padded copy of x is made.
    """
    xp = get_array_module(x)
    c, n, h, w = x.shape
    cols = scratch(xp, role, (c, kh, kw, n, ho, wo), x.dtype)
    taps = []
    for i in range(kh):
        r0, r1 = _valid(h, ho, i * dh, sh, ph)
        for j in range(kw):
            q0, q1 = _valid(w, wo, j * dw, sw, pw)
            taps.append((i, j, r0, r1, q0, q1))

    def fill(c0: int, c1: int) -> None:
        for i, j, r0, r1, q0, q1 in taps:
            dst = cols[c0:c1, i, j]
            if r0 > 0:
                dst[:, :, :r0] = 0
            if r1 < ho:
                dst[:, :, r1:] = 0
            if r1 > r0:
                if q0 > 0:
                    dst[:, :, r0:r1, :q0] = 0
                if q1 < wo:
                    dst[:, :, r0:r1, q1:] = 0
                if q1 > q0:
                    dst[:, :, r0:r1, q0:q1] = x[c0:c1, :,
                                               r0 * sh + i * dh - ph:(r1 - 1) * sh + i * dh - ph + 1:sh,
                                               q0 * sw + j * dw - pw:(q1 - 1) * sw + j * dw - pw + 1:sw]
    by_channel(fill, c, cols.nbytes)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im(cols: Any, c: int, n: int, hp: int, wp: int, kh: int, kw: int, sh: int, sw: int,
           dh: int, dw: int, ho: int, wo: int) -> Any:
    """Columns (C*kh*kw, N*ho*wo) -> padded (C, N, Hp, Wp), summing overlaps (adjoint of im2col)."""
    xp = get_array_module(cols)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    out = xp.zeros((c, n, hp, wp), dtype=cols.dtype)

    def scatter(c0: int, c1: int) -> None:
        for i in range(kh):
            for j in range(kw):
                hs, ws = window(i, j, sh, sw, dh, dw, ho, wo)
                out[c0:c1, :, hs, ws] += cols[c0:c1, i, j]
    by_channel(scatter, c, cols.nbytes)
    return out


def check_4d(layer: Any, x: Any, channels: int | None = None) -> None:
    """Raise ValueError naming the layer unless x is (N, channels, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"{layer.label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer.label} expects {channels} input channels (N, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
