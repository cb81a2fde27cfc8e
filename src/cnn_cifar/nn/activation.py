"""Element-wise activations."""
from __future__ import annotations

from .. import backend, runtime
from ..backend import Array, get_array_module, is_host
from . import gelu_host, kernels, special
from .layout import chwn, nchw
from .module import Module, grad_enabled


class ReLU(Module):
    """max(x, 0); backward passes the gradient where the output is positive.

    ``inplace=True`` (as in PyTorch) overwrites the input, saving an allocation and a pass; use it only
    where nothing else keeps the input (after batch norm, which keeps its own normalised values).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        if x.ndim == 4:          # keep the channel-major layout and split the pass by channel
            xc = chwn(x)
            shape = xc.shape
            yc = xc if self.inplace else xp.empty(shape, dtype=x.dtype)
            if xc.flags.c_contiguous and yc.flags.c_contiguous:        # rows (C, H*W*N): long inner loops
                xc, yc = xc.reshape(shape[0], -1), yc.reshape(shape[0], -1)
            runtime.by_channel(lambda c0, c1: runtime.relu(xc[c0:c1], out=yc[c0:c1]), xc)
            y = nchw(yc.reshape(shape))
        else:
            y = runtime.relu(x, out=x if self.inplace else None)
        self.save_for_backward(y)
        return y

    def backward(self, dy: Array) -> Array:
        y, = self.saved()
        xp = get_array_module(dy)
        if not backend.is_host(dy):                  # GPU: one fused pass, in the (C, H, W, N) layout
            if dy.ndim == 4:
                return nchw(kernels.relu_backward(chwn(dy), chwn(y)))
            return kernels.relu_backward(dy, y)
        if dy.ndim == 4:
            dyc, yc = chwn(dy), chwn(y)
            dxc = xp.empty(yc.shape, dtype=dy.dtype)
            runtime.by_channel(lambda c0, c1: xp.multiply(dyc[c0:c1], yc[c0:c1] > 0, out=dxc[c0:c1]), dyc)
            return nchw(dxc)
        return xp.multiply(dy, y > 0)


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|; backward dy * y * (1 - y)."""

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        e = xp.exp(-xp.abs(x))                     # in (0, 1]: no overflow either way
        y = xp.where(x >= 0, 1.0, e) / (1.0 + e)
        y = y.astype(x.dtype, copy=False)
        self.save_for_backward(y)
        return y

    def backward(self, dy: Array) -> Array:
        y, = self.saved()
        return dy * (y * (1.0 - y))


class GELU(Module):
    """The exact GELU, x * Phi(x) with Phi the standard normal distribution function, as PyTorch's
    ``nn.GELU()`` (approximate='none'); backward dy * (Phi(x) + x * phi(x)). Phi comes from ``special``
    (erfc, accurate for very negative x, where 1 + erf would cancel). Float16 is computed in float32. On the
    host, float32 runs ``gelu_host``'s cache-blocked pass, on a GPU one fused kernel (``kernels.gelu``); both
    keep only the gradient factor for backward."""

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        xw = x.astype(xp.float32) if x.dtype.itemsize < 4 else x
        if is_host(xw) and xw.dtype == xp.float32:
            y, factor = gelu_host.forward(xw, keep_grad=grad_enabled())
            self.save_for_backward(None, factor)
            return y.astype(x.dtype, copy=False)
        if not is_host(xw):                               # one fused kernel (computed in double)
            if xw.ndim == 4:                              # over the (C, H, W, N) memory, outputs laid out alike
                y, factor = (nchw(a) for a in kernels.gelu(chwn(xw)))
            else:
                y, factor = kernels.gelu(xw)
            self.save_for_backward(None, factor)
            return y.astype(x.dtype, copy=False)
        cdf = special.normal_cdf(xw)
        self.save_for_backward(xw, cdf)
        return (xw * cdf).astype(x.dtype, copy=False)

    def backward(self, dy: Array) -> Array:
        x, cdf = self.saved()
        if x is None:                                     # gelu_host kept the factor Phi(x) + x phi(x)
            return (dy * cdf).astype(dy.dtype, copy=False)
        return (dy * (cdf + x * special.normal_pdf(x))).astype(dy.dtype, copy=False)
