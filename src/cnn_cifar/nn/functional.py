"""Array helpers shared by the layers: layout views, padding, im2col and col2im.

Layers keep 4-D activations as NCHW *views* of buffers laid out (C, N, H, W) in memory.
``cnhw(x)`` returns that (C, N, H, W) view (free when x came from one of our layers), so im2col
copies whole contiguous rows, the conv matmul writes its output without a transpose, and
per-channel reductions (batch norm) run along contiguous memory.
"""
from __future__ import annotations

from typing import Any

from ..backend import get_array_module


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
    out = xp.full((c, n, h + 2 * ph, w + 2 * pw), value, dtype=xc.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = xc
    return out


def window(i: int, j: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> tuple[slice, slice]:
    """The strided slices of the padded input seen by kernel tap (i, j)."""
    return (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def im2col(xpad: Any, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
           ho: int, wo: int) -> Any:
    """Padded (C, N, Hp, Wp) -> columns (C*kh*kw, N*ho*wo): one kh*kw loop of slice copies."""
    xp = get_array_module(xpad)
    c, n = xpad.shape[:2]
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            hs, ws = window(i, j, sh, sw, dh, dw, ho, wo)
            cols[:, i, j] = xpad[:, :, hs, ws]
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im(cols: Any, c: int, n: int, hp: int, wp: int, kh: int, kw: int, sh: int, sw: int,
           dh: int, dw: int, ho: int, wo: int) -> Any:
    """Columns (C*kh*kw, N*ho*wo) -> padded (C, N, Hp, Wp), summing overlaps (adjoint of im2col)."""
    xp = get_array_module(cols)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    out = xp.zeros((c, n, hp, wp), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            hs, ws = window(i, j, sh, sw, dh, dw, ho, wo)
            out[:, :, hs, ws] += cols[:, i, j]
    return out


def check_4d(layer: Any, x: Any, channels: int | None = None) -> None:
    """Raise ValueError naming the layer unless x is (N, channels, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"{layer.label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer.label} expects {channels} input channels (N, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
