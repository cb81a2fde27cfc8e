"""The CPU runtime: worker threads, BLAS pinning, reusable buffers, and the host allocator.

Nothing here runs at import. ``enable()`` switches the process-wide tuning on (the CLIs call it; a library
user may too); everything else acts only on the NumPy arrays it is given. GPU arrays always take the
plain single-threaded path, so layer code can call these helpers without asking which backend is active.

Buffers. im2col columns and padded inputs are larger than an activation and live only inside one layer
call. Allocating them fresh costs a page fault per 4 KiB (glibc serves large blocks with new mmap pages),
so each thread keeps one growing buffer per role. A buffer is *borrowed* in a ``with`` block and returned
at its end; borrowing a role that is already out raises ``BufferInUse`` instead of handing out memory that
someone is still reading.
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from functools import partial
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .backend import Array, get_array_module, is_host

T = TypeVar("T")

THREADS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                     int(os.environ.get("CNN_CIFAR_THREADS", "0")) or 64))
"""Worker threads for channel-parallel passes and conv tile runs (CNN_CIFAR_THREADS, else the usable cores)."""
PARALLEL_MIN_BYTES = 4 << 20
"""Passes over smaller arrays run in the calling thread: below this, thread hand-off costs more than it saves."""

_local = threading.local()


# --------------------------------------------------------------------------------------------- threads
class _Worker:
    """One pool thread, handed one call at a time through two locks (no queue, no futures): a hand-off and
    the wait for its end cost a lock release and acquire each, about half of what a ThreadPoolExecutor's
    submit and wait cost (61 us for a section of two empty calls), at every parallel section."""

    def __init__(self, index: int) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._call: Callable[[], Any] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name=f"cnn-cifar-{index}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            try:
                self._result = self._call()
            except BaseException as exc:           # handed to the caller by outcome()
                self._error = exc
            self._call = None
            self._done.release()

    def start(self, call: Callable[[], Any]) -> None:
        self._call = call                     # result and error are None: unset, or cleared by outcome()
        self._go.release()

    def outcome(self) -> tuple[Any, BaseException | None]:
        """Wait for the call to end: (its result, None), or (None, the exception it raised)."""
        self._done.acquire()
        result, error = self._result, self._error
        self._result = self._error = None
        return result, error


_workers: list[_Worker] = []
_pool_lock = threading.Lock()          # one parallel section at a time; another thread's runs serially


def _forget_workers() -> None:
    """In a forked child the pool's threads do not exist: start new ones when needed."""
    global _pool_lock
    _workers.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _nested() -> bool:
    """True inside a worker thread, or while this thread runs its share of a parallel section."""
    return getattr(_local, "in_parallel", False) or threading.current_thread().name.startswith("cnn-cifar")


def _share(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run calls[0] in this thread and the rest on the pool's threads, as one parallel section (library calls
    made inside run serially, ``_nested``); return their results in order once every call has finished, or
    raise the first call's exception in order. While another thread holds the pool (a user's thread beside
    the training loop), the calls run one after another in this thread."""
    if not _pool_lock.acquire(blocking=False):
        return [call() for call in calls]
    try:
        while len(_workers) < len(calls) - 1:
            _workers.append(_Worker(len(_workers)))
        _local.in_parallel = True
        for worker, call in zip(_workers, calls[1:]):
            worker.start(call)
        try:
            first = calls[0]()
        finally:
            _local.in_parallel = False
            try:
                outcomes = [worker.outcome() for worker in _workers[:len(calls) - 1]]
            except BaseException:              # interrupted while waiting (Ctrl-C): a call may still be running,
                _workers.clear()               # so the next section starts threads of its own
                raise
        for _, exc in outcomes:
            if exc is not None:
                raise exc
        return [first] + [result for result, _ in outcomes]
    finally:
        _pool_lock.release()


def by_channel(fn: Callable[[int, int], None], a: Array, channels: int | None = None) -> None:
    """Call fn(c0, c1) over chunks of range(channels) (default: a.shape[0]).

    NumPy's copies and ufuncs release the GIL, so a memory-bound pass over a host array of at least
    PARALLEL_MIN_BYTES splits into one chunk per core. Device arrays, small arrays and calls made from
    inside a parallel section run in one call in the calling thread.
    """
    channels = a.shape[0] if channels is None else channels
    chunks = min(THREADS, channels)
    if chunks < 2 or a.nbytes < PARALLEL_MIN_BYTES or not is_host(a) or _nested():
        fn(0, channels)
        return
    bounds = [channels * k // chunks for k in range(chunks + 1)]
    with single_threaded_blas():                  # the chunks' own BLAS calls (row_sums) stay on their cores
        _share([partial(fn, bounds[k], bounds[k + 1]) for k in range(chunks)])


def in_runs(work: Callable[[Sequence[T]], Any], items: Sequence[T], a: Array) -> list[Any]:
    """Call work(run) on runs of consecutive items and return the results, one per run.

    For host arrays ``a``, with several cores and at least two items per core, the items are split into one
    run per core, run concurrently: each core keeps its tile in its own cache (runs must not write to the
    same memory). Otherwise (device arrays, one core, few items) there is one run, in this thread.

    Host runs always call BLAS single-threaded, one run as well as several: once a call wakes OpenBLAS's own
    worker threads, they spin-wait for about 0.1 s after it returns, and a core they spin on is a core our
    runs wait for (a ResNet-32 training step took 1.4x as long when a few of its multiplies ran on 2 BLAS
    threads).
    """
    if not is_host(a) or _nested() or not can_pin_blas():
        return [work(items)]
    t = THREADS
    with single_threaded_blas():
        if t < 2 or len(items) < 2 * t:
            return [work(items)]
        bounds = [len(items) * k // t for k in range(t + 1)]
        return _share([partial(work, items[bounds[k]:bounds[k + 1]]) for k in range(t)])


PARALLEL_MIN_MACS = 1 << 23
"""``matmul`` splits a product over the cores from this many multiply-adds: ~170 microseconds on one core,
against ~50 for handing work to a pool thread and taking it back."""


def matmul(a: Array, b: Array) -> Array:
    """a @ b of 2-D arrays on the library's threads rather than BLAS's own (see ``in_runs`` for why).

    For host arrays, a product of at least PARALLEL_MIN_MACS multiply-adds splits its longer output side into
    one block per core, each a single-threaded BLAS call; a smaller one is one single-threaded call. Device
    arrays (and calls from inside a parallel section) get a plain ``a @ b``.
    """
    if not is_host(a) or _nested() or not can_pin_blas():
        return a @ b
    xp = get_array_module(a)
    (m, k), n = a.shape, b.shape[1]
    out = xp.empty((m, n), dtype=xp.result_type(a, b))
    t = min(THREADS, max(m, n))
    with single_threaded_blas():
        if t < 2 or m * n * k < PARALLEL_MIN_MACS:
            xp.matmul(a, b, out=out)
            return out

        def part(i: int) -> None:
            if m >= n:
                r0, r1 = m * i // t, m * (i + 1) // t
                xp.matmul(a[r0:r1], b, out=out[r0:r1])
            else:
                c0, c1 = n * i // t, n * (i + 1) // t
                xp.matmul(a, b[:, c0:c1], out=out[:, c0:c1])
        _share([partial(part, i) for i in range(t)])
    return out


NUMPY_GIL_MIN_OUTPUT = 500
"""NumPy's matmul releases the GIL only for a product of more than this many output elements (its threshold for
dropping the GIL around a loop); a smaller one holds it for the whole multiply, however long its inner side."""


def matmul_released(a: Array, b: Array) -> Array:
    """a @ b for stacks (..., m, k) @ (..., k, n) whose output is too small for NumPy to release the GIL during
    the multiply (the weight gradient of a 3-channel first conv: 8 x 27 outputs over 10,000-long rows), which
    would make the cores' tile runs take turns. The inner side is cut into enough pieces, multiplied as one
    batch (an output large enough to release the GIL) and summed, plus the remainder's product. Larger
    products, and device arrays, are a plain ``a @ b``."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    outputs = m * n
    for d in a.shape[:-2]:
        outputs *= d
    pieces = NUMPY_GIL_MIN_OUTPUT // max(1, outputs) + 1
    if outputs > NUMPY_GIL_MIN_OUTPUT or not is_host(a) or k < 2 * pieces:
        return a @ b
    q = k // pieces
    main = pieces * q
    lead = a.shape[:-2]
    ap = a[..., :main].reshape(*lead, m, pieces, q).swapaxes(-3, -2)       # (..., pieces, m, q)
    bp = b[..., :main, :].reshape(*lead, pieces, q, n)                     # (..., pieces, q, n)
    out = (ap @ bp).sum(axis=-3)
    if main < k:
        out += a[..., main:] @ b[..., main:, :]
    return out


# ----------------------------------------------------------------------------------------- element-wise
_rows: dict[tuple[str, float], Array] = {}


def relu(x: Array, out: Array | None = None) -> Array:
    """max(x, 0) (NaN passes), into ``out`` where given.

    For host arrays the zero is a row of zeros broadcast along the last axis rather than the scalar 0: NumPy's
    maximum has no SIMD loop for a broadcast scalar and runs about 5x slower with one than with two arrays
    (0.32 against 0.066 ms over 4 MiB of float32 in rows of 131,072). Give it long rows: the inner loop is one
    row. Device arrays get a plain ``maximum(x, 0)``."""
    xp = get_array_module(x)
    if not is_host(x) or x.ndim == 0:
        return xp.maximum(x, 0, out=out)
    return xp.maximum(x, _filled(xp, x.shape[-1], x.dtype, 0), out=out)


def row_sums(a: Array) -> Array:
    """a.sum(axis=1) of a 2-D float array (C, M), as one single-threaded BLAS product with a row of ones.

    NumPy's own sum over contiguous rows runs at a third of the speed of BLAS's (0.139 against 0.043 ms for
    8 rows of 131,072 float32) for an error of the same size (BLAS keeps many partial sums, NumPy sums
    pairwise). Device arrays get a plain ``sum``."""
    if not is_host(a):
        return a.sum(axis=1)
    xp = get_array_module(a)
    with _pinned():
        return a @ _filled(xp, a.shape[1], a.dtype, 1)


def row_dots(a: Array, b: Array) -> Array:
    """(a * b).sum(axis=1) of two 2-D float arrays (C, M), one single-threaded BLAS dot product per row
    (about three times as fast as einsum's loop over a row with itself, 1.5 times over two). Device arrays
    get einsum."""
    xp = get_array_module(a)
    if not is_host(a):
        return xp.einsum("cm,cm->c", a, b)
    with _pinned():
        return (a[:, None, :] @ b[:, :, None]).reshape(a.shape[0])


@contextmanager
def _pinned() -> Iterator[None]:
    """BLAS single-threaded for a call of this thread: already so inside a parallel section (``by_channel``
    and ``in_runs`` pin it for the whole section: a thread of its own must not restore it early)."""
    if _nested():
        yield
    else:
        with single_threaded_blas():
            yield


def _filled(xp: ModuleType, n: int, dtype: Any, value: float) -> Array:
    """A read-only row of n ``value``s (0 or 1) of ``dtype``, shared by all threads (one kept per dtype and
    value, grown as needed)."""
    key = (xp.dtype(dtype).str, value)
    z = _rows.get(key)
    if z is None or z.shape[0] < n:
        z = xp.full(n, value, dtype=dtype)
        z.flags.writeable = False
        _rows[key] = z
    return z[:n]


# ------------------------------------------------------------------------------------------------ BLAS
_blas_libs: list | None = None


def _blas_controllers() -> list:
    """threadpoolctl handles on the BLAS libraries NumPy loaded ([] if they cannot be inspected)."""
    global _blas_libs
    if _blas_libs is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:                 # threadpoolctl unable to inspect this process
            _blas_libs = []
    return _blas_libs


def can_pin_blas() -> bool:
    """Whether single_threaded_blas() can actually limit NumPy's BLAS."""
    return bool(_blas_controllers())


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Inside, NumPy's BLAS runs each call on its calling thread; the thread counts are restored after."""
    libs = _blas_controllers()
    saved = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, saved):
            lib.set_num_threads(n)


# --------------------------------------------------------------------------------------------- buffers
class BufferInUse(RuntimeError):
    """A workspace buffer was borrowed again before the earlier borrow was returned."""


def _buffers() -> tuple[dict, set]:
    pool = getattr(_local, "buffers", None)
    if pool is None:
        pool = _local.buffers = ({}, set())
    return pool


@contextmanager
def workspace(xp: ModuleType, role: str, shape: tuple[int, ...], dtype: Any) -> Iterator[Array]:
    """Borrow an uninitialised array of ``shape`` from this thread's reusable buffer for ``role``."""
    bufs, out = _buffers()
    key = (role, xp.__name__, xp.dtype(dtype).str)
    if key in out:
        raise BufferInUse(f"workspace buffer {role!r} is already borrowed in this thread")
    n = 1
    for d in shape:
        n *= int(d)
    buf = bufs.get(key)
    if buf is None or buf.size < n:
        buf = bufs[key] = xp.empty(n, dtype=dtype)
    out.add(key)
    try:
        yield buf[:n].reshape(shape)
    finally:
        out.discard(key)


@contextmanager
def padded(xc: Array, ph: int, pw: int, value: float = 0.0, size: tuple[int, int] | None = None) -> Iterator[Array]:
    """Borrow (C, H, W, N) ``xc`` with its spatial axes padded by ``value``, in a reusable buffer.

    ``ph`` rows above and ``pw`` columns left, as many below and right, or up to ``size`` = (rows, columns)
    in all where given (the Winograd path's tiles reach past the usual padding). The buffer is keyed by
    padded shape, padding and fill value, so its border is written once, when it is created, and later
    borrows copy only the interior. Without padding, ``xc`` itself is lent.
    """
    c, h, w, n = xc.shape
    hp, wp = size if size is not None else (h + 2 * ph, w + 2 * pw)
    if (ph, pw, hp, wp) == (0, 0, h, w):
        yield xc
        return
    xp = get_array_module(xc)
    shape = (c, hp, wp, n)
    key = ("pad", shape, (ph, pw, h, w), float(value), xp.__name__, xp.dtype(xc.dtype).str)
    bufs, out = _buffers()
    if key in out:
        raise BufferInUse(f"padding buffer {shape} is already borrowed in this thread")
    buf = bufs.get(key)
    if buf is None:
        buf = bufs[key] = xp.full(shape, value, dtype=xc.dtype)

    def fill(c0: int, c1: int) -> None:
        buf[c0:c1, ph:ph + h, pw:pw + w] = xc[c0:c1]
    by_channel(fill, buf)
    out.add(key)
    try:
        yield buf
    finally:
        out.discard(key)


# ------------------------------------------------------------------------------------- host allocator
_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Training allocates and frees activation-sized arrays (megabytes) every step. By default glibc serves
    large blocks with fresh mmap pages and trims the heap, so each step pays a page fault per 4 KiB touched
    (the Performance page of the manual says how much). With mmap off and trimming disabled, freed blocks are reused;
    peak memory is unchanged. CNN_CIFAR_MALLOC_TUNING=0 leaves glibc alone. Returns True if applied.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("CNN_CIFAR_MALLOC_TUNING", "1") == "0":
        return _allocator_tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        ok = (libc.mallopt(m_mmap_max, 0) == 1
              and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
              and libc.mallopt(m_top_pad, 64 << 20) == 1)
    except (OSError, AttributeError):   # not glibc (macOS, musl): nothing to do
        ok = False
    _allocator_tuned = ok
    return ok


def enable() -> dict:
    """Apply the process-wide CPU tuning a training or evaluation run wants (today: the host allocator).

    Importing the library changes nothing in the host process; the CLIs call this once at start, and a
    library user who trains on the CPU can call it too. Returns what was applied.
    """
    return {"host_allocator": tune_host_allocator()}
