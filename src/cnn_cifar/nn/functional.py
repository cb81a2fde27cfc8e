"""Array helpers shared by the layers: layout views, padding, im2col and col2im.

Layers keep 4-D activations as NCHW *views* of buffers laid out (C, H, W, N) in memory: channel
first, batch last. ``chwn(x)`` returns that (C, H, W, N) view (free when x came from one of our
layers). Channel-major, the conv matmul writes its output without a transpose and per-channel
reductions (batch norm) run along contiguous rows; batch-last, every im2col slice copy moves runs
of wo*N contiguous values (not wo), so the copies run at memory speed even on 8x8 feature maps.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, NamedTuple

from .. import backend
from ..backend import get_array_module

# ---------------------------------------------------------------------------------------------------
# Scratch workspace. im2col columns and their gradients are kh*kw times larger than an activation and
# live only inside one layer call. Allocating them fresh costs a page fault per 4 KiB every time (glibc
# serves blocks above 32 MiB with new mmap pages), so each thread keeps one growing buffer per role and
# hands out views of it. A view is valid until the next scratch() call for the same role.
_local = threading.local()


def _workspace() -> dict:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def scratch(xp: Any, role: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array of ``shape`` backed by this thread's reusable buffer for ``role``."""
    pool = _workspace()
    n = 1
    for d in shape:
        n *= int(d)
    key = (role, xp.__name__, xp.dtype(dtype).str)
    buf = pool.get(key)
    if buf is None or buf.size < n:
        buf = pool[key] = xp.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


# ---------------------------------------------------------------------------------------------------
# Channel-parallel helper. NumPy's copies and ufuncs release the GIL, so memory-bound passes over a
# (C, ...) array split by channel into one chunk per core run in parallel threads. GPU arrays and small
# arrays run in the calling thread.
_THREADS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                      int(os.environ.get("CNN_CIFAR_THREADS", "0")) or 64))
_PARALLEL_MIN_BYTES = 4 << 20
_executor: ThreadPoolExecutor | None = None


def _executor_pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="cnn-cifar")
    return _executor


def _nested() -> bool:
    """True inside a worker thread, or while this thread runs its share of a parallel section."""
    return getattr(_local, "in_parallel", False) or threading.current_thread().name.startswith("cnn-cifar")


def by_channel(fn: Callable[[int, int], None], channels: int, nbytes: int) -> None:
    """Call fn(c0, c1) over chunks of range(channels), in parallel on the NumPy backend when worth it."""
    chunks = min(_THREADS, channels)
    if chunks < 2 or nbytes < _PARALLEL_MIN_BYTES or backend.name != "numpy" or _nested():
        fn(0, channels)
        return
    bounds = [channels * k // chunks for k in range(chunks + 1)]
    futures = [_executor_pool().submit(fn, bounds[k], bounds[k + 1]) for k in range(1, chunks)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


def chwn(x: Any) -> Any:
    """(N, C, H, W) array -> its (C, H, W, N) view."""
    return x.transpose(1, 2, 3, 0)


_T_BLOCK = 8          # samples per block in chwn_contiguous's two-pass transpose


def chwn_contiguous(x: Any) -> Any:
    """(N, C, H, W) -> a C-contiguous (C, H, W, N) array: the free view for our own activations,
    else one transposing copy (images from a loader), split by channel across threads."""
    xc = chwn(x)
    if xc.flags.c_contiguous:
        return xc
    xp = get_array_module(x)
    out = xp.empty(xc.shape, dtype=xc.dtype)
    n, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    blocked = x.flags.c_contiguous and n >= 2 * _T_BLOCK and backend.name == "numpy"

    def fill(c0: int, c1: int) -> None:
        if not blocked:
            out[c0:c1] = xc[c0:c1]
            return
        # (N, M) -> (M, N) in two cache-friendly passes instead of one with a 4*M-byte read stride:
        # each block of _T_BLOCK samples is transposed while it is in cache, then the blocks are
        # interleaved with runs of _T_BLOCK contiguous values.
        src = x.reshape(n, c * hw)[:, c0 * hw:c1 * hw]
        dst = out[c0:c1].reshape(-1, n)
        nb = n // _T_BLOCK
        m = nb * _T_BLOCK
        tmp = scratch(xp, "transpose", (nb, dst.shape[0], _T_BLOCK), x.dtype)
        xp.copyto(tmp, src[:m].reshape(nb, _T_BLOCK, -1).transpose(0, 2, 1))
        xp.copyto(dst[:, :m].reshape(-1, nb, _T_BLOCK), tmp.transpose(1, 0, 2))
        if m < n:
            dst[:, m:] = src[m:].T
    by_channel(fill, c, out.nbytes)
    return out


def nchw(x: Any) -> Any:
    """(C, H, W, N) array -> its (N, C, H, W) view."""
    return x.transpose(3, 0, 1, 2)


def rows(x: Any) -> Any:
    """(N, C, H, W) -> (C, H*W*N) matrix; a view when x has our (C, H, W, N) layout, else one copy."""
    n, c, h, w = x.shape
    return chwn(x).reshape(c, h * w * n)


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution/pool along one axis."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def window(i: int, j: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int,
           y0: int = 0, x0: int = 0) -> tuple[slice, slice]:
    """The strided (H, W) slices of the padded input seen by kernel tap (i, j) for output rows
    [y0, y0 + ho) and output columns [x0, x0 + wo)."""
    top, left = y0 * sh + i * dh, x0 * sw + j * dw
    return (slice(top, top + sh * (ho - 1) + 1, sh),
            slice(left, left + sw * (wo - 1) + 1, sw))


def padded(xc: Any, ph: int, pw: int, value: float = 0.0) -> Any:
    """(C, H, W, N) with its spatial axes padded by ``value``, in a reusable per-thread buffer.

    The buffer is keyed by shape and fill value, so its border is written once when it is created and
    later calls copy only the interior. The result is valid until the next call with the same shape.
    """
    if ph == 0 and pw == 0:
        return xc
    xp = get_array_module(xc)
    c, h, w, n = xc.shape
    pool = _workspace()
    # Keyed by the padding as well as the padded shape: a 4x4 input padded by 3 and a 6x6 one padded by 2
    # share a shape, but their borders differ, and only the border is never rewritten.
    shape = (c, h + 2 * ph, w + 2 * pw, n)
    key = ("pad", shape, (ph, pw), float(value), xp.__name__, xp.dtype(xc.dtype).str)
    buf = pool.get(key)
    if buf is None:
        buf = pool[key] = xp.full(shape, value, dtype=xc.dtype)

    def fill(c0: int, c1: int) -> None:
        buf[c0:c1, ph:ph + h, pw:pw + w] = xc[c0:c1]
    by_channel(fill, c, buf.nbytes)
    return buf


# Convolutions build their column matrix one tile of output pixels at a time, each tile about this
# many bytes: small enough to stay in a core's cache between im2col writing it and the matmul reading
# it. One whole-batch matrix (75 MB for a ResNet stage-1 conv at batch 128) went through DRAM twice
# and ran 1.5-3x slower. The loop runs over cache-sized tiles, not over pixels or samples.
_TILE_BYTES = int(os.environ.get("CNN_CIFAR_TILE_BYTES", str(2 << 20)))


class Tile(NamedTuple):
    """Output rows [y0, y0 + rows) and columns [x0, x1) of a conv; several rows only with all columns."""
    y0: int
    rows: int
    x0: int
    x1: int

    def of(self, a: Any) -> Any:
        """This tile of a (C, Ho, Wo, N) array as a (C, pixels*N) matrix (a view for contiguous a)."""
        return a[:, self.y0:self.y0 + self.rows, self.x0:self.x1].reshape(a.shape[0], -1)


def conv_tiles(ho: int, wo: int, pixel_bytes: int) -> list[Tile]:
    """Tiles covering an ho x wo output whose column matrix takes ``pixel_bytes`` per output pixel:
    whole rows grouped up to ~_TILE_BYTES, or a row split into column ranges if one row is larger
    (a 500-image batch). One tile on a GPU, where the whole matrix is best built at once."""
    if backend.name != "numpy" or _TILE_BYTES <= 0:
        return [Tile(0, ho, 0, wo)]
    row_bytes = max(1, pixel_bytes * wo)
    if row_bytes <= _TILE_BYTES:
        step = _TILE_BYTES // row_bytes
        return [Tile(y0, min(step, ho - y0), 0, wo) for y0 in range(0, ho, step)]
    pieces = min(wo, -(-row_bytes // _TILE_BYTES))
    return [Tile(y0, 1, wo * k // pieces, wo * (k + 1) // pieces) for y0 in range(ho) for k in range(pieces)]


def run_tiles(work: Callable[[list[Tile]], Any], tiles: list[Tile],
              parallel: bool = True) -> list[Any]:
    """Call work(run) on runs of consecutive tiles and return the results, one per run.

    On the NumPy backend with several cores and at least two tiles per core, the tiles are split into
    one run per core, run concurrently with single-threaded BLAS: each core builds a tile's columns
    and multiplies them while they are in its own L2 cache. Otherwise (GPU, one core, few tiles,
    ``parallel=False`` when runs would write to the same memory) there is one run, in this thread.
    """
    t = _THREADS
    if (not parallel or t < 2 or len(tiles) < 2 * t or backend.name != "numpy" or _nested()
            or not backend.can_pin_blas()):
        return [work(tiles)]
    bounds = [len(tiles) * k // t for k in range(t + 1)]
    runs = [tiles[bounds[k]:bounds[k + 1]] for k in range(t)]
    with backend.single_threaded_blas():
        _local.in_parallel = True
        futures = [_executor_pool().submit(work, run) for run in runs[1:]]
        try:
            first = work(runs[0])
        finally:
            _local.in_parallel = False
            wait(futures)
    return [first] + [f.result() for f in futures]


def im2col(xpad: Any, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, tile: Tile,
           role: str = "cols") -> Any:
    """Padded (C, Hp, Wp, N) -> columns (C*kh*kw, pixels*N) for the output pixels of ``tile``.

    kh*kw slice copies into the ``role`` scratch buffer (valid until the next im2col with that role
    in this thread).
    """
    xp = get_array_module(xpad)
    c, n = xpad.shape[0], xpad.shape[3]
    rows, cols_w = tile.rows, tile.x1 - tile.x0
    cols = scratch(xp, role, (c, kh, kw, rows, cols_w, n), xpad.dtype)

    def fill(c0: int, c1: int) -> None:
        for i in range(kh):
            for j in range(kw):
                hs, ws = window(i, j, sh, sw, dh, dw, rows, cols_w, tile.y0, tile.x0)
                cols[c0:c1, i, j] = xpad[c0:c1, hs, ws]
    by_channel(fill, c, cols.nbytes)
    return cols.reshape(c * kh * kw, -1)


def col2im_add(cols: Any, xpad: Any, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
               tile: Tile) -> None:
    """Add the columns (C*kh*kw, pixels*N) of ``tile``'s output pixels into padded (C, Hp, Wp, N),
    summing overlaps: the adjoint of im2col."""
    c, n = xpad.shape[0], xpad.shape[3]
    rows, cols_w = tile.rows, tile.x1 - tile.x0
    cols = cols.reshape(c, kh, kw, rows, cols_w, n)

    def scatter(c0: int, c1: int) -> None:
        for i in range(kh):
            for j in range(kw):
                hs, ws = window(i, j, sh, sw, dh, dw, rows, cols_w, tile.y0, tile.x0)
                xpad[c0:c1, hs, ws] += cols[c0:c1, i, j]
    by_channel(scatter, c, cols.nbytes)


def check_4d(layer: Any, x: Any, channels: int | None = None) -> None:
    """Raise ValueError naming the layer unless x is (N, channels, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"{layer.label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer.label} expects {channels} input channels (N, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
