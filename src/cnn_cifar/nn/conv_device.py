"""The device path of ``Conv2d`` (CuPy arrays): the whole column matrix built by one kernel
(``kernels.im2col_gpu``, the padding applied by a bounds check) in a reused workspace, one matrix multiply
each way, and the input gradient gathered by another kernel (``kernels.col2im_gpu``): a handful of launches
per direction instead of kh*kw copies. On the CuPy stand-in the kernels' NumPy references run.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .. import backend, runtime
from ..backend import Array, get_array_module
from . import kernels
from .im2col import ConvGeometry
from .layout import chwn_contiguous, nchw


def _geometry_args(xc: Array, geo: ConvGeometry, ho: int, wo: int) -> tuple[int, ...]:
    """The kernels' geometry arguments (H, W, N, Ho, Wo, KH, KW, SH, SW, PH, PW, DH, DW)."""
    c, h, w, n = xc.shape
    return (h, w, n, ho, wo, geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw, geo.dh, geo.dw)


@contextmanager
def _cols(xc: Array, geo: ConvGeometry, ho: int, wo: int) -> Iterator[Array]:
    """Borrow the whole (C*kh*kw, Ho*Wo*N) column matrix of contiguous xc, filled in one kernel. The
    buffer is the thread's reusable "cols" workspace (no allocation per call; on one CUDA stream the
    next layer's kernels run after this one's matrix multiplies have read it)."""
    shape = (xc.shape[0] * geo.taps, ho * wo * xc.shape[3])
    with runtime.workspace(get_array_module(xc), "cols", shape, xc.dtype) as cols:
        yield kernels.im2col_gpu(xc, *_geometry_args(xc, geo, ho, wo), cols)


def forward(xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int,
            bias: Array | None = None) -> Array:
    """y (O, Ho, Wo, N), plus ``bias`` (O,) where given: one im2col kernel and one matrix multiply (2-D when
    groups == 1)."""
    xp = get_array_module(xc)
    g, o, n = groups, weight.shape[0], xc.shape[3]
    with _cols(xc, geo, ho, wo) as cols:
        if g == 1:
            y = xp.matmul(weight.reshape(o, -1), cols)
        else:
            y = xp.matmul(weight.reshape(g, o // g, -1), cols.reshape(g, -1, cols.shape[1]))
    y = y.reshape(o, ho, wo, n)
    if bias is not None:
        y += bias[:, None, None, None]
    return y


def backward(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
             input_grad: bool) -> Array | None:
    """Both gradients from the recomputed columns of x: dW = dy cols^T added into ``wgrad`` (by cuBLAS in place
    when the dtypes allow), dx = col2im(W^T dy) (C, H, W, N), or None without ``input_grad``."""
    xp = get_array_module(dyc)
    g, o = groups, weight.shape[0]
    _, ho, wo, _ = dyc.shape
    dy2 = chwn_contiguous(nchw(dyc)).reshape(o, -1)              # our layers' gradients: no copy
    with _cols(xc, geo, ho, wo) as cols:
        if g == 1 and dy2.dtype == wgrad.dtype:                 # dW += dy cols^T: cuBLAS adds in place (beta 1)
            backend.cublas().gemm("N", "T", dy2, cols, out=wgrad.reshape(o, -1), beta=1.0)
        elif g == 1:                                            # float16 under autocast into float32 grads
            wgrad += xp.matmul(dy2, cols.T).reshape(wgrad.shape)
        else:
            dy3, cols3 = dy2.reshape(g, o // g, -1), cols.reshape(g, -1, cols.shape[1])
            wgrad += xp.matmul(dy3, cols3.transpose(0, 2, 1)).reshape(wgrad.shape)
    if not input_grad:
        return None
    if g == 1:
        dcols = xp.matmul(weight.reshape(o, -1).T, dy2)
    else:
        dcols = xp.matmul(weight.reshape(g, o // g, -1).transpose(0, 2, 1), dy2.reshape(g, o // g, -1))
    dx = kernels.col2im_gpu(dcols, *_geometry_args(xc, geo, ho, wo), size=xc.size)    # allocates dx
    return dx.reshape(xc.shape)
