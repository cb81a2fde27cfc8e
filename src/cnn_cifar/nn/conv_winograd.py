"""The Winograd path of ``Conv2d``: 3x3 stride-1 convolutions with 36 multiplies per 4x4 output tile, not 144.

Winograd's minimal filtering algorithm F(m x m, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016) computes each m x m tile of output pixels from the (m+2) x (m+2) input tile d under
it as

    y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) the element-wise product, per channel pair

with constant matrices A, B, G (``_MATRICES``). Summed over input channels, the element-wise products become
a = (m+2)^2 independent matrix multiplies, one per position xi of the transformed tile:
M[xi] (O x P) = U[xi] (O x C) @ V[xi] (C x P), with U = G g G^T the transformed weight and V = B^T d B the
transformed input tiles (P = tiles x samples). F(4x4, 3x3), the default ``TILE``, makes 36 products per
tile where im2col makes 9 * 16 = 144 (fewer where tiles hang over the edge: ``saving``); F(2x2, 3x3)
makes 16 where im2col makes 36. Both gradients are the same multiplies transposed: dU[xi] = dM[xi] @ V[xi]^T
and dV[xi] = U[xi]^T @ dM[xi], with dM = A dy A^T; dW = G^T dU G and the input gradient B dV B^T, added back
onto the overlapping input tiles. Each transform is one small matrix multiply over a block (the Kronecker
product of the 1-D transform with itself) between strided copies of the tiles. The larger tile's transforms
have entries up to 8 and 1/24, so float32 results carry about 20 times im2col's rounding (a relative 1e-5
against 5e-7; ``TILE = 2`` stays at im2col's): tests bound both in float32 and check the gradients against
finite differences in float64.

Arrays are (C, H, W, N) as on the other paths. The work runs in blocks of samples x tile rows sized to
stay in cache (``BLOCK_BYTES``); runs of sample blocks go to worker threads (``runtime.in_runs``). A
thread keeps all tile rows of its samples, so the input gradient's overlapping scatter needs no locks.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import numpy as np

from .. import runtime
from ..backend import Array, get_array_module, is_host
from .im2col import ConvGeometry

TILE = int(os.environ.get("CNN_CIFAR_WINOGRAD_TILE", "4"))
"""Output pixels per tile side: 4 (F(4x4, 3x3), the fastest) or 2 (F(2x2, 3x3), im2col's rounding)."""
MIN_CHANNELS = int(os.environ.get("CNN_CIFAR_WINOGRAD_MIN_CHANNELS", "24"))
"""Host convolutions with at least this many input and output channels take this path (0: never) ..."""
MIN_SAMPLES = int(os.environ.get("CNN_CIFAR_WINOGRAD_MIN_SAMPLES", "512"))
"""... in batches of at least this many samples: the transforms are passes over runs of samples (the
layout is batch-last) and only pay where the runs are long ..."""
MIN_COVERAGE = 0.6
"""... and with an output that fills at least this fraction of its tiles' pixels (``coverage``: 0.88 for a
15x15 output in 4x4 tiles, 0.77 for 7x7, 0.56 for 3x3, whose tiles are mostly padding and cost more in
transforms than their products save). ``benchmarks/winograd_tune.py`` measures where the path wins and
loses against im2col (the manual's Performance page has its figures: wide layers at batch 1024 win,
ResNet-32's at batch 128 and the 3x3 maps do not)."""
BLOCK_BYTES = int(os.environ.get("CNN_CIFAR_WINOGRAD_BLOCK_BYTES", str(16 << 20)))
"""About how many bytes of tiles, transformed tiles and products one block holds: a share of the L3 cache
per core (``benchmarks/winograd_tune.py --block-bytes`` compares sizes)."""

_MATRICES = {       # m: (B^T, G, A^T) of F(m x m, 3x3), interpolation points 0, +-1 (, +-2) and infinity
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def coverage(ho: int, wo: int, m: int | None = None) -> float:
    """The fraction of the m x m tiles' pixels that lie inside an ho x wo output."""
    m = TILE if m is None else m
    return ho * wo / (m * m * -(-ho // m) * -(-wo // m))


def saving(ho: int, wo: int, m: int | None = None) -> float:
    """im2col's multiplies over this path's for an ho x wo output: 9 per pixel against (m+2)^2 per m x m tile."""
    m = TILE if m is None else m
    return coverage(ho, wo, m) * 9 * m * m / (m + 2) ** 2


def applies(geo: ConvGeometry, groups: int, in_channels: int, out_channels: int, xc: Array) -> bool:
    """Whether this path convolves ``xc`` (C, H, W, N): a 3x3, stride-1, undilated, ungrouped conv of float32
    or float64 host arrays, ``MIN_CHANNELS`` channels on both sides, ``MIN_SAMPLES`` samples, an output that
    covers ``MIN_COVERAGE`` of its tiles. GPU arrays keep the device path (cuBLAS over one column matrix)."""
    if not (MIN_CHANNELS > 0 and geo.kh == geo.kw == 3 and geo.sh == geo.sw == 1 and geo.dh == geo.dw == 1
            and groups == 1 and min(in_channels, out_channels) >= MIN_CHANNELS and xc.shape[3] >= MIN_SAMPLES
            and is_host(xc) and xc.dtype in (np.float32, np.float64)):
        return False
    ho, wo = geo.out_size(xc.shape[1], xc.shape[2])
    return ho >= 1 and wo >= 1 and coverage(ho, wo) >= MIN_COVERAGE


class _Plan(NamedTuple):
    """One conv's tiling: m x m output tiles of a = (m+2)^2 transformed values, ``th`` x ``tw`` of them over
    the input window (the padded input, extended by zeros to m*th + 2 rows and m*tw + 2 columns), in blocks
    of ``rows`` tile rows and ``samples`` samples."""
    m: int
    th: int
    tw: int
    rows: int
    samples: int

    @classmethod
    def of(cls, c: int, o: int, ho: int, wo: int, n: int, itemsize: int) -> "_Plan":
        m = TILE
        th, tw = -(-ho // m), -(-wo // m)
        per_tile = ((m + 2) ** 2 * (2 * c + o) + m * m * o) * itemsize      # tiles, V, M, y of one tile
        samples = max(1, min(n, BLOCK_BYTES // (per_tile * tw),
                             -(-n // (2 * runtime.THREADS))))     # two sample blocks per core at least
        if samples >= 8:
            samples -= samples % 8                         # runs of whole 32-byte vectors
        rows = max(1, min(th, BLOCK_BYTES // (per_tile * tw * samples)))
        return cls(m, th, tw, rows, samples)

    @property
    def a(self) -> int:
        return (self.m + 2) ** 2

    def window(self) -> tuple[int, int]:
        """Rows and columns of the zero-extended input the tiles read."""
        return self.m * self.th + 2, self.m * self.tw + 2

    def sample_blocks(self, n: int) -> list[tuple[int, int]]:
        return [(n0, min(n, n0 + self.samples)) for n0 in range(0, n, self.samples)]

    def row_blocks(self) -> list[tuple[int, int]]:
        return [(t0, min(self.th, t0 + self.rows)) for t0 in range(0, self.th, self.rows)]

    def transforms(self, xp, dtype: np.dtype) -> tuple[Array, Array]:
        """B^T (x) B^T (a, a) and A^T (x) A^T (m*m, a): each tile's transforms as one matrix product."""
        bt, _, at = (np.array(t, dtype=np.float64) for t in _MATRICES[self.m])
        return xp.asarray(np.kron(bt, bt), dtype=dtype), xp.asarray(np.kron(at, at), dtype=dtype)

    def weight(self, weight: Array, dtype: np.dtype) -> Array:
        """U = G g G^T as (a, O, C), contiguous, computed in float64."""
        xp = get_array_module(weight)
        g = xp.asarray(np.array(_MATRICES[self.m][1], dtype=np.float64))
        u = xp.einsum("ai,ocij,bj->aboc", g, weight.astype(np.float64), g)
        return xp.ascontiguousarray(u.reshape(self.a, *u.shape[2:]), dtype=dtype)

    def weight_gradient(self, du: Array) -> Array:
        """dW = G^T dU G for dU (a, O, C): (O, C, 3, 3), in float64."""
        xp = get_array_module(du)
        g = xp.asarray(np.array(_MATRICES[self.m][1], dtype=np.float64))
        k = self.m + 2
        return xp.einsum("ai,aboc,bj->ocij", g, du.reshape(k, k, *du.shape[1:]).astype(np.float64), g)


def _gather_tiles(xb: Array, plan: _Plan, rows: int, d: Array) -> None:
    """The input tiles of ``rows`` tile rows from the window xb (C, m*rows + 2, wp, n) into d (k, k, C, rows,
    tw, n), k = m + 2: one strided copy per position in the tile."""
    m, k = plan.m, plan.m + 2
    for i in range(k):
        for j in range(k):
            d[i, j] = xb[:, i:i + m * rows:m, j:j + m * plan.tw:m]


def _scatter_tiles(d: Array, plan: _Plan, rows: int, dxb: Array) -> None:
    """The adjoint of ``_gather_tiles``: add the tiles d (k, k, C, rows, tw, n) onto the window dxb, where
    neighbouring tiles overlap by two pixels (each copy's own tiles are disjoint)."""
    m, k = plan.m, plan.m + 2
    for i in range(k):
        for j in range(k):
            dxb[:, i:i + m * rows:m, j:j + m * plan.tw:m] += d[i, j]


@contextmanager
def _block_buffers(xp, plan: _Plan, c: int, o: int, t0: int, t1: int, n0: int, n1: int,
                   dtype: np.dtype) -> Iterator[tuple[Array, Array, Array, Array]]:
    """This thread's buffers for the block of tile rows [t0, t1) and samples [n0, n1): the input tiles
    (m+2, m+2, C, ...), V (a, C, ...), M or dM (a, O, ...) and the output tiles (m, m, O, ...)."""
    m, a, tiles = plan.m, plan.a, (t1 - t0, plan.tw, n1 - n0)
    with runtime.workspace(xp, "winograd_d", (m + 2, m + 2, c) + tiles, dtype) as d, \
            runtime.workspace(xp, "winograd_v", (a, c) + tiles, dtype) as v, \
            runtime.workspace(xp, "winograd_m", (a, o) + tiles, dtype) as mm, \
            runtime.workspace(xp, "winograd_y", (m, m, o) + tiles, dtype) as yt:
        yield d, v, mm, yt


def _transformed_input(xe: Array, plan: _Plan, kb: Array, t0: int, t1: int, n0: int, n1: int, d: Array,
                       v: Array) -> None:
    """V = B^T d B of the block's input tiles into v (d keeps the tiles), from the padded input xe."""
    xp = get_array_module(xe)
    m = plan.m
    _gather_tiles(xe[:, m * t0:m * t1 + 2, :, n0:n1], plan, t1 - t0, d)
    xp.matmul(kb, d.reshape(plan.a, -1), out=v.reshape(plan.a, -1))


def _put_output(yt: Array, plan: _Plan, t0: int, rows: int, y: Array) -> None:
    """The output tiles yt (m, m, O, rows, tw, n) into y (O, ho, wo, n) from tile row t0 on; pixels of tiles
    that hang over the bottom or right edge are dropped."""
    m = plan.m
    ho, wo = y.shape[1:3]
    for i in range(m):
        ti = min(rows, (ho - i + m - 1) // m - t0)         # tile rows whose pixel row i is inside
        for j in range(m):
            tj = (wo - j + m - 1) // m
            if ti > 0 and tj > 0:
                y[:, m * t0 + i:m * (t0 + ti - 1) + i + 1:m, j:m * (tj - 1) + j + 1:m] = yt[i, j][:, :ti, :tj]


def forward(xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int,
            bias: Array | None = None) -> Array:
    """y (O, ho, wo, N) of the contiguous input xc (C, H, W, N), plus ``bias`` (O,) where given."""
    xp = get_array_module(xc)
    c, _, _, n = xc.shape
    o = weight.shape[0]
    plan = _Plan.of(c, o, ho, wo, n, xc.itemsize)
    m, a = plan.m, plan.a
    u = plan.weight(weight, xc.dtype)
    kb, ka = plan.transforms(xp, xc.dtype)
    y = xp.empty((o, ho, wo, n), dtype=xc.dtype)
    with runtime.padded(xc, geo.ph, geo.pw, size=plan.window()) as xe:
        def work(blocks: list[tuple[int, int]]) -> None:
            for n0, n1 in blocks:
                for t0, t1 in plan.row_blocks():
                    with _block_buffers(xp, plan, c, o, t0, t1, n0, n1, xc.dtype) as (d, v, mm, yt):
                        _transformed_input(xe, plan, kb, t0, t1, n0, n1, d, v)          # V = B^T d B
                        xp.matmul(u, v.reshape(a, c, -1), out=mm.reshape(a, o, -1))       # M = U V
                        xp.matmul(ka, mm.reshape(a, -1), out=yt.reshape(m * m, -1))       # A^T M A
                        _put_output(yt, plan, t0, t1 - t0, y[..., n0:n1])
        runtime.in_runs(work, plan.sample_blocks(n), xc)
    if bias is not None:
        y += bias[:, None, None, None]
    return y


def backward(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
             input_grad: bool) -> Array | None:
    """dW added into ``wgrad``; dx (C, H, W, N), or None without ``input_grad``."""
    xp = get_array_module(dyc)
    c, h, w, n = xc.shape
    o, ho, wo, _ = dyc.shape
    plan = _Plan.of(c, o, ho, wo, n, xc.itemsize)
    m, a = plan.m, plan.a
    hp, wp = plan.window()
    u = plan.weight(weight, dyc.dtype)
    ut = u.transpose(0, 2, 1)
    kb, ka = plan.transforms(xp, dyc.dtype)
    dxe = xp.zeros((c, hp, wp, n), dtype=dyc.dtype) if input_grad else None
    with runtime.padded(xc, geo.ph, geo.pw, size=(hp, wp)) as xe, \
            runtime.padded(dyc, 0, 0, size=(m * plan.th, m * plan.tw)) as dye:
        def work(blocks: list[tuple[int, int]]) -> Array:          # returns this run's dU part
            du = xp.zeros((a, o, c), dtype=wgrad.dtype)
            for n0, n1 in blocks:
                for t0, t1 in plan.row_blocks():
                    with _block_buffers(xp, plan, c, o, t0, t1, n0, n1, dyc.dtype) as (d, v, dm, dyt):
                        _transformed_input(xe, plan, kb, t0, t1, n0, n1, d, v)          # V, as forward
                        dyb = dye[:, m * t0:m * t1, :, n0:n1]
                        for i in range(m):
                            for j in range(m):
                                dyt[i, j] = dyb[:, i::m, j::m]
                        xp.matmul(ka.T, dyt.reshape(m * m, -1), out=dm.reshape(a, -1))     # dM = A dy A^T
                        dm3, v3 = dm.reshape(a, o, -1), v.reshape(a, c, -1)
                        du += xp.matmul(dm3, v3.transpose(0, 2, 1))                       # dU = dM V^T
                        if dxe is not None:
                            xp.matmul(ut, dm3, out=v3)                                    # dV = U^T dM
                            xp.matmul(kb.T, v.reshape(a, -1), out=d.reshape(a, -1))        # B dV B^T
                            _scatter_tiles(d, plan, t1 - t0, dxe[:, m * t0:m * t1 + 2, :, n0:n1])
            return du
        du = sum(runtime.in_runs(work, plan.sample_blocks(n), xc))
    wgrad += plan.weight_gradient(du).astype(wgrad.dtype, copy=False)
    return None if dxe is None else dxe[:, geo.ph:geo.ph + h, geo.pw:geo.pw + w]
