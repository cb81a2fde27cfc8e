"""The depthwise path of ``Conv2d`` (one input and one output channel per group: ``Conv2d(C, C, k,
groups=C)``), on either backend.

As a grouped im2col convolution it would build a column matrix kh*kw times the input and run C matrix
multiplies of one row each. Here each kernel tap is one multiply-add of a shifted (strided) window of the
padded (C, H, W, N) input by that tap's per-channel weights, over the whole batch at once: kh*kw passes,
no column matrix. The weight gradient of a tap is one per-channel dot product of dy with the same window.
"""
from __future__ import annotations

from .. import runtime
from ..backend import Array, get_array_module
from .im2col import ConvGeometry


def forward(xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int,
            bias: Array | None = None) -> Array:
    """y (C, ho, wo, N), plus ``bias`` (C,) where given, from the input xc (C, H, W, N) and the weight
    (C, 1, kh, kw)."""
    xp = get_array_module(xc)
    c, n = xc.shape[0], xc.shape[3]
    kernel = weight.reshape(c, geo.kh, geo.kw)
    y = xp.zeros((c, ho, wo, n), dtype=xc.dtype)
    tap = xp.empty_like(y)
    with runtime.padded(xc, geo.ph, geo.pw) as xpad:
        for i in range(geo.kh):
            for j in range(geo.kw):
                rows, cols = geo.window(i, j, ho, wo)
                xp.multiply(xpad[:, rows, cols], kernel[:, i, j, None, None, None], out=tap)
                y += tap
    if bias is not None:
        y += bias[:, None, None, None]
    return y


def backward(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
             input_grad: bool) -> Array | None:
    """dW (C, 1, kh, kw) added into ``wgrad``; dx (C, H, W, N) from dy (C, ho, wo, N), or None without
    ``input_grad``."""
    xp = get_array_module(dyc)
    c, h, w, _ = xc.shape
    _, ho, wo, _ = dyc.shape
    kernel = weight.reshape(c, geo.kh, geo.kw)
    dw = xp.empty((c, geo.kh, geo.kw), dtype=dyc.dtype)
    tap = xp.empty_like(dyc) if input_grad else None
    with runtime.padded(xc, geo.ph, geo.pw) as xpad:
        dxpad = xp.zeros(xpad.shape, dtype=dyc.dtype) if input_grad else None
        for i in range(geo.kh):
            for j in range(geo.kw):
                rows, cols = geo.window(i, j, ho, wo)
                dw[:, i, j] = xp.einsum("chwn,chwn->c", dyc, xpad[:, rows, cols])
                if dxpad is not None:
                    xp.multiply(dyc, kernel[:, i, j, None, None, None], out=tap)
                    dxpad[:, rows, cols] += tap
    wgrad += dw.reshape(weight.shape)
    return None if dxpad is None else dxpad[:, geo.ph:geo.ph + h, geo.pw:geo.pw + w]
