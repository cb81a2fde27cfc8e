"""The Winograd path of ``Conv2d``: 3x3 stride-1 convolutions with 16 multiplies per 2x2 output tile, not 36.

Winograd's minimal filtering algorithm F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016) computes each 2x2 tile of output pixels from the 4x4 input tile under it as

    y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) the element-wise product, per channel pair

with the constant matrices below. Summed over input channels, the element-wise products become 16
independent matrix multiplies, one per position xi of the 4x4 transformed tile:
M[xi] (O x P) = U[xi] (O x C) @ V[xi] (C x P), with U = G g G^T the transformed weight and V = B^T d B the
transformed input tiles (P = tiles x samples). The multiplies are 2.25 times fewer than im2col's (4/9 of
them, less the tiles that hang over an odd edge); the transforms are additions and cost little where
channels are many (``MIN_CHANNELS``). Both gradients are the same 16 multiplies transposed:
dU[xi] = dM[xi] @ V[xi]^T and dV[xi] = U[xi]^T @ dM[xi], with dM = A dy A^T; dW = G^T dU G and the input
gradient B dV B^T, scattered back onto the overlapping input tiles. The transforms' entries are 0, +-1 and
+-1/2, so float32 results stay within a few roundings of im2col's (tests compare both in float32 and
check the gradients against finite differences in float64).

Arrays are (C, H, W, N) as on the other paths. The work runs in blocks of samples x tile rows sized to
stay in cache (``BLOCK_BYTES``); runs of sample blocks go to worker threads (``runtime.in_runs``). A
thread keeps all tile rows of its samples, so the input gradient's overlapping scatter needs no locks.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from .. import runtime
from ..backend import Array, get_array_module, is_host
from .im2col import ConvGeometry

MIN_CHANNELS = int(os.environ.get("CNN_CIFAR_WINOGRAD_MIN_CHANNELS", "24"))
"""Host convolutions with at least this many input and output channels take this path (0: never) ..."""
MIN_SAMPLES = int(os.environ.get("CNN_CIFAR_WINOGRAD_MIN_SAMPLES", "512"))
"""... in batches of at least this many samples: the transforms are passes over runs of samples (the
layout is batch-last) and only pay where the runs are long ..."""
MIN_SAVING = 1.5
"""... and with an output large enough that the tiles save this factor of multiplies (``saving``: 1.98
on a 15x15 output, 1.72 on 7x7, 1.27 on 3x3, where tiles hanging over the edge waste most of the gain).
``benchmarks/winograd_tune.py`` measures where the path wins and loses against im2col (the manual's
Performance page has its figures: wide layers at batch 1024 win, ResNet-32's at batch 128 do not)."""
BLOCK_BYTES = int(os.environ.get("CNN_CIFAR_WINOGRAD_BLOCK_BYTES", str(8 << 20)))
"""About how many bytes of transformed input and products one block holds: a share of the L3 cache per
core (``benchmarks/winograd_tune.py --block-bytes`` compares sizes)."""

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def saving(ho: int, wo: int) -> float:
    """im2col's multiplies over this path's for an ho x wo output (th x tw tiles of 16 products each)."""
    return 9 * ho * wo / (16 * -(-ho // 2) * -(-wo // 2))


def applies(geo: ConvGeometry, groups: int, in_channels: int, out_channels: int, xc: Array) -> bool:
    """Whether this path convolves ``xc`` (C, H, W, N): a 3x3, stride-1, undilated, ungrouped conv of float32
    or float64 host arrays, ``MIN_CHANNELS`` channels on both sides, ``MIN_SAMPLES`` samples, an output large
    enough to save ``MIN_SAVING``. GPU arrays keep the device path (cuBLAS over one column matrix)."""
    if not (MIN_CHANNELS > 0 and geo.kh == geo.kw == 3 and geo.sh == geo.sw == 1 and geo.dh == geo.dw == 1
            and groups == 1 and min(in_channels, out_channels) >= MIN_CHANNELS and xc.shape[3] >= MIN_SAMPLES
            and is_host(xc) and xc.dtype in (np.float32, np.float64)):
        return False
    ho, wo = geo.out_size(xc.shape[1], xc.shape[2])
    return ho >= 1 and wo >= 1 and saving(ho, wo) >= MIN_SAVING


class _Plan(NamedTuple):
    """Tile counts of one conv and its blocks: ``th`` x ``tw`` 2x2 output tiles over an (hp, wp) input
    window (the padded input, extended by zeros to 2*th + 2 rows and 2*tw + 2 columns), blocks of ``rows``
    tile rows and ``samples`` samples."""
    th: int
    tw: int
    rows: int
    samples: int

    @classmethod
    def of(cls, c: int, o: int, ho: int, wo: int, n: int, itemsize: int) -> "_Plan":
        th, tw = -(-ho // 2), -(-wo // 2)
        per_tile = 16 * (c + o) * itemsize                 # V and M of one tile of one sample
        samples = max(1, min(n, BLOCK_BYTES // (per_tile * tw),
                             -(-n // (2 * runtime.THREADS))))     # two sample blocks per core at least
        if samples >= 8:
            samples -= samples % 8                         # runs of whole 32-byte vectors
        rows = max(1, min(th, BLOCK_BYTES // (per_tile * tw * samples)))
        return cls(th, tw, rows, samples)

    def sample_blocks(self, n: int) -> list[tuple[int, int]]:
        return [(n0, min(n, n0 + self.samples)) for n0 in range(0, n, self.samples)]

    def row_blocks(self) -> list[tuple[int, int]]:
        return [(t0, min(self.th, t0 + self.rows)) for t0 in range(0, self.th, self.rows)]


def _transformed_weight(weight: Array, dtype: np.dtype) -> Array:
    """U = G g G^T as 16 (O, C) matrices, (16, O, C) contiguous."""
    xp = get_array_module(weight)
    g = xp.asarray(_G, dtype=np.float64 if dtype == np.float64 else np.float32)
    u = xp.einsum("ai,ocij,bj->aboc", g, weight.astype(g.dtype, copy=False), g)
    return xp.ascontiguousarray(u.reshape(16, *u.shape[2:]), dtype=dtype)


def _weight_gradient(du: Array) -> Array:
    """dW = G^T dU G for dU (16, O, C): (O, C, 3, 3)."""
    xp = get_array_module(du)
    g = xp.asarray(_G, dtype=du.dtype)
    return xp.einsum("ai,aboc,bj->ocij", g, du.reshape(4, 4, *du.shape[1:]), g)


class _Embedded:
    """A (C, H, W, N) array placed at (top, left) in a zero (C, hp, wp, N) buffer of this thread."""

    def __init__(self, role: str, a: Array, top: int, left: int, hp: int, wp: int):
        self.role, self.a, self.top, self.left, self.hp, self.wp = role, a, top, left, hp, wp

    def __enter__(self) -> Array:
        a, top, left = self.a, self.top, self.left
        c, h, w, n = a.shape
        if (top, left, self.hp, self.wp) == (0, 0, h, w):
            self._ws = None
            return a
        xp = get_array_module(a)
        self._ws = runtime.workspace(xp, self.role, (c, self.hp, self.wp, n), a.dtype)
        buf = self._ws.__enter__()

        def fill(c0: int, c1: int) -> None:
            b = buf[c0:c1]
            b[:, :top] = 0
            b[:, top + h:] = 0
            b[:, top:top + h, :left] = 0
            b[:, top:top + h, left + w:] = 0
            b[:, top:top + h, left:left + w] = a[c0:c1]
        runtime.by_channel(fill, buf)
        return buf

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.__exit__(*exc)


def _bt(xp, d: list[Array], out: Array) -> None:
    """out[k] = sum_a B^T[k, a] d[a] for the four views d (one axis of the input transform)."""
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def _input_transform(xb: Array, rows: int, tw: int, v: Array) -> None:
    """V = B^T d B of the input window xb (C, 2*rows + 2, wp, n) into v (4, 4, C, rows, tw, n)."""
    xp = get_array_module(xb)
    c, _, wp, n = xb.shape
    with runtime.workspace(xp, "winograd_rows", (4, c, rows, wp, n), xb.dtype) as r:
        _bt(xp, [xb[:, a:a + 2 * rows:2] for a in range(4)], r)
        for k in range(4):
            _bt(xp, [r[k][:, :, b:b + 2 * tw:2] for b in range(4)], v[k])


def _kron_at(xp, dtype: np.dtype) -> Array:
    """A^T (x) A^T: row 2i + j maps the 16 values M[k, l] of a tile to its output pixel (i, j)."""
    return xp.asarray(np.kron(_AT, _AT), dtype=dtype)


def _output_transform(m: Array, y: Array, t0: int, rows: int, ho: int, wo: int) -> None:
    """y = A^T M A of m (4, 4, O, rows, tw, n) written into the output y (O, ho, wo, n) at tile row t0
    (pixels of tiles that hang over the edge are dropped): one (4, 16) @ (16, O*rows*tw*n) multiply, then
    a copy per pixel of the tile."""
    xp = get_array_module(m)
    with runtime.workspace(xp, "winograd_y", (2, 2) + m.shape[2:], m.dtype) as yt:
        xp.matmul(_kron_at(xp, m.dtype), m.reshape(16, -1), out=yt.reshape(4, -1))
        for i in range(2):
            ti = min(rows, (ho - i + 1) // 2 - t0)          # tile rows whose pixel row i is inside
            for j in range(2):
                tj = (wo - j + 1) // 2
                y[:, 2 * t0 + i:2 * (t0 + ti) + i - 1:2, j:2 * tj + j - 1:2] = yt[i, j][:, :ti, :tj]


def _output_adjoint(dyb: Array, rows: int, tw: int, dm: Array) -> None:
    """dM = A dy A^T of the output-gradient window dyb (O, 2*rows, 2*tw, n) into dm (4, 4, O, rows, tw, n)."""
    xp = get_array_module(dyb)
    with runtime.workspace(xp, "winograd_y", (2, 2) + dm.shape[2:], dyb.dtype) as yt:
        for i in range(2):
            for j in range(2):
                yt[i, j] = dyb[:, i::2, j::2]
        xp.matmul(_kron_at(xp, dyb.dtype).T, yt.reshape(4, -1), out=dm.reshape(16, -1))


def _b_adjoint(xp, dv: list[Array], even: Array, odd: Array, tmp: Array, add: bool) -> None:
    """sum_k B^T[k, a] dv[k] for a = 0..3 onto overlapping tiles along the first axis of the views: a = 0
    and 2 land on ``even``'s first and last len-1 entries, a = 1 and 3 on ``odd``'s (tile t's a = 2, 3
    meet tile t+1's a = 0, 1). ``even`` and ``odd`` are one entry longer than the dv views. With ``add``
    the result is added to them, else it replaces them."""
    t = dv[0].shape[0]
    if add:
        even[:t] += dv[0]
    else:
        even[:t] = dv[0]
        even[t] = 0
    xp.add(dv[1], dv[2], out=tmp)
    tmp -= dv[0]
    even[1:] += tmp
    xp.subtract(dv[1], dv[2], out=tmp)
    tmp += dv[3]
    if add:
        odd[:t] += tmp
    else:
        odd[:t] = tmp
        odd[t] = 0
    odd[1:] -= dv[3]


def _input_adjoint_add(dv: Array, dxb: Array, rows: int, tw: int) -> None:
    """Add B dV B^T of dv (4, 4, C, rows, tw, n) into the input-gradient window dxb (C, 2*rows + 2, wp, n)."""
    xp = get_array_module(dv)
    c, n = dv.shape[2], dv.shape[5]
    wp = dxb.shape[2]
    with runtime.workspace(xp, "winograd_rows", (4, c, rows, wp, n), dv.dtype) as z, \
            runtime.workspace(xp, "winograd_tmp", (c * rows * wp * n,), dv.dtype) as flat:
        tmp = flat[:c * rows * tw * n].reshape(c, rows, tw, n).transpose(2, 0, 1, 3)
        for k in range(4):                    # along columns, each row k of the transform
            zk = z[k].transpose(2, 0, 1, 3)
            _b_adjoint(xp, [dv[k, b].transpose(2, 0, 1, 3) for b in range(4)], zk[0::2], zk[1::2], tmp,
                       add=False)
        dxt = dxb.transpose(1, 0, 2, 3)       # then along rows, added into the window
        tmp = flat.reshape(rows, c, wp, n)
        _b_adjoint(xp, [z[k].transpose(1, 0, 2, 3) for k in range(4)], dxt[0::2], dxt[1::2], tmp, add=True)


def forward(xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int) -> Array:
    """y (O, ho, wo, N) of the contiguous input xc (C, H, W, N), without the bias."""
    xp = get_array_module(xc)
    c, _, _, n = xc.shape
    o = weight.shape[0]
    plan = _Plan.of(c, o, ho, wo, n, xc.itemsize)
    u = _transformed_weight(weight, xc.dtype)
    y = xp.empty((o, ho, wo, n), dtype=xc.dtype)
    with _Embedded("winograd_x", xc, geo.ph, geo.pw, 2 * plan.th + 2, 2 * plan.tw + 2) as xe:
        def work(blocks: list[tuple[int, int]]) -> None:
            for n0, n1 in blocks:
                for t0, t1 in plan.row_blocks():
                    rows, shape = t1 - t0, (4, 4, c, t1 - t0, plan.tw, n1 - n0)
                    with runtime.workspace(xp, "winograd_v", shape, xc.dtype) as v, \
                            runtime.workspace(xp, "winograd_m", (4, 4, o) + shape[3:], xc.dtype) as m:
                        _input_transform(xe[:, 2 * t0:2 * t1 + 2, :, n0:n1], rows, plan.tw, v)
                        xp.matmul(u, v.reshape(16, c, -1), out=m.reshape(16, o, -1))
                        _output_transform(m, y[..., n0:n1], t0, rows, ho, wo)
        runtime.in_runs(work, plan.sample_blocks(n), xc)
    return y


def backward(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
             input_grad: bool) -> Array | None:
    """dW added into ``wgrad``; dx (C, H, W, N), or None without ``input_grad``."""
    xp = get_array_module(dyc)
    c, h, w, n = xc.shape
    o, ho, wo, _ = dyc.shape
    plan = _Plan.of(c, o, ho, wo, n, xc.itemsize)
    hp, wp = 2 * plan.th + 2, 2 * plan.tw + 2
    u = _transformed_weight(weight, dyc.dtype)
    ut = u.transpose(0, 2, 1)
    dxe = xp.zeros((c, hp, wp, n), dtype=dyc.dtype) if input_grad else None
    with _Embedded("winograd_x", xc, geo.ph, geo.pw, hp, wp) as xe, \
            _Embedded("winograd_dy", dyc, 0, 0, 2 * plan.th, 2 * plan.tw) as dye:
        def work(blocks: list[tuple[int, int]]) -> Array:          # returns this run's dU part
            du = xp.zeros((16, o, c), dtype=wgrad.dtype)
            for n0, n1 in blocks:
                for t0, t1 in plan.row_blocks():
                    rows, shape = t1 - t0, (4, 4, c, t1 - t0, plan.tw, n1 - n0)
                    with runtime.workspace(xp, "winograd_v", shape, dyc.dtype) as v, \
                            runtime.workspace(xp, "winograd_m", (4, 4, o) + shape[3:], dyc.dtype) as dm:
                        _input_transform(xe[:, 2 * t0:2 * t1 + 2, :, n0:n1], rows, plan.tw, v)
                        _output_adjoint(dye[:, 2 * t0:2 * t1, :, n0:n1], rows, plan.tw, dm)
                        dm2, v2 = dm.reshape(16, o, -1), v.reshape(16, c, -1)
                        du += xp.matmul(dm2, v2.transpose(0, 2, 1))
                        if dxe is not None:
                            xp.matmul(ut, dm2, out=v2)                    # dV, in V's place
                            _input_adjoint_add(v, dxe[:, 2 * t0:2 * t1 + 2, :, n0:n1], rows, plan.tw)
            return du
        du = sum(runtime.in_runs(work, plan.sample_blocks(n), xc))
    wgrad += _weight_gradient(du).astype(wgrad.dtype, copy=False)
    return None if dxe is None else dxe[:, geo.ph:geo.ph + h, geo.pw:geo.pw + w]
