"""Depthwise convolution (one input and one output channel per group): the fast path of
``Conv2d(C, C, k, groups=C)``.

As a grouped im2col convolution it would build a column matrix kh*kw times the input and run C matrix
multiplies of one row each. Here each kernel tap is one multiply-add of a shifted (strided) window of the
padded (C, H, W, N) input by that tap's per-channel weights, over the whole batch at once: kh*kw passes,
no column matrix. The weight gradient of a tap is one per-channel dot product of dy with the same window.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .im2col import ConvGeometry


def depthwise_forward(xpad: Array, weight: Array, geo: ConvGeometry, ho: int, wo: int) -> Array:
    """y (C, ho, wo, N) from the padded input (C, Hp, Wp, N) and the weight (C, 1, kh, kw)."""
    xp = get_array_module(xpad)
    c, n = xpad.shape[0], xpad.shape[3]
    w = weight.reshape(c, geo.kh, geo.kw)
    y = xp.zeros((c, ho, wo, n), dtype=xpad.dtype)
    tap = xp.empty_like(y)
    for i in range(geo.kh):
        for j in range(geo.kw):
            rows, cols = geo.window(i, j, ho, wo)
            xp.multiply(xpad[:, rows, cols], w[:, i, j, None, None, None], out=tap)
            y += tap
    return y


def depthwise_backward(xpad: Array, dy: Array, weight: Array, geo: ConvGeometry,
                       input_grad: bool = True) -> tuple[Array, Array | None]:
    """(dW (C, 1, kh, kw), dx of the padded input (C, Hp, Wp, N) or None) from dy (C, ho, wo, N)."""
    xp = get_array_module(dy)
    c, ho, wo, _ = dy.shape
    w = weight.reshape(c, geo.kh, geo.kw)
    dw = xp.empty((c, geo.kh, geo.kw), dtype=dy.dtype)
    dxpad = xp.zeros(xpad.shape, dtype=dy.dtype) if input_grad else None
    tap = xp.empty_like(dy) if input_grad else None
    for i in range(geo.kh):
        for j in range(geo.kw):
            rows, cols = geo.window(i, j, ho, wo)
            dw[:, i, j] = xp.einsum("chwn,chwn->c", dy, xpad[:, rows, cols])
            if dxpad is not None:
                xp.multiply(dy, w[:, i, j, None, None, None], out=tap)
                dxpad[:, rows, cols] += tap
    return dw.reshape(weight.shape), dxpad
