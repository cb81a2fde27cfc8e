"""The activation layout: NCHW views of buffers laid out (C, H, W, N) in memory.

Layers keep 4-D activations channel first, batch last. ``chwn(x)`` returns the (C, H, W, N) view of an
(N, C, H, W) array (free when x came from one of our layers). Channel-major, the conv matmul writes its
output without a transpose and per-channel reductions (batch norm) run along contiguous rows; batch-last,
every im2col slice copy moves runs of wo*N contiguous values (not wo), so the copies run at memory speed
even on 8x8 feature maps. Shapes seen by users stay PyTorch's NCHW.
"""
from __future__ import annotations

from .. import backend, runtime
from ..backend import Array, get_array_module


def chwn(x: Array) -> Array:
    """(N, C, H, W) array -> its (C, H, W, N) view."""
    return x.transpose(1, 2, 3, 0)


def nchw(x: Array) -> Array:
    """(C, H, W, N) array -> its (N, C, H, W) view."""
    return x.transpose(3, 0, 1, 2)


def rows(x: Array) -> Array:
    """(N, C, H, W) -> (C, H*W*N) matrix; a view when x has our (C, H, W, N) layout, else one copy."""
    n, c, h, w = x.shape
    return chwn(x).reshape(c, h * w * n)


_T_BLOCK = 8          # samples per block in chwn_contiguous's two-pass transpose


def chwn_contiguous(x: Array) -> Array:
    """(N, C, H, W) -> a C-contiguous (C, H, W, N) array: the free view for our own activations,
    else one transposing copy (images from a loader), split by channel across threads."""
    xc = chwn(x)
    if xc.flags.c_contiguous:
        return xc
    xp = get_array_module(x)
    out = xp.empty(xc.shape, dtype=xc.dtype)
    n, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    blocked = x.flags.c_contiguous and n >= 2 * _T_BLOCK and backend.is_host(x)

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
        with runtime.workspace(xp, "transpose", (nb, dst.shape[0], _T_BLOCK), x.dtype) as tmp:
            xp.copyto(tmp, src[:m].reshape(nb, _T_BLOCK, -1).transpose(0, 2, 1))
            xp.copyto(dst[:, :m].reshape(-1, nb, _T_BLOCK), tmp.transpose(1, 0, 2))
        if m < n:
            dst[:, m:] = src[m:].T
    runtime.by_channel(fill, out)
    return out


def check_4d(layer: object, x: Array, channels: int | None = None) -> None:
    """Raise ValueError naming the layer unless x is (N, channels, H, W)."""
    label = getattr(layer, "label", type(layer).__name__)
    if x.ndim != 4:
        raise ValueError(f"{label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{label} expects {channels} input channels (N, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
