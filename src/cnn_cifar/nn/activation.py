"""Element-wise activations."""
from __future__ import annotations

from typing import Any

from .. import backend
from . import functional as F
from .module import Module, grad_enabled


class ReLU(Module):
    """max(x, 0); backward passes the gradient where the output is positive.

    ``inplace=True`` (as in PyTorch) overwrites the input, saving an allocation and a pass; use it only
    where nothing else keeps the input (after batch norm, which caches its own normalised values).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self._y: Any = None

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        if x.ndim == 4:          # keep the channel-major layout and split the pass by channel
            xc = F.chwn(x)
            yc = xc if self.inplace else xp.empty(xc.shape, dtype=x.dtype)
            F.by_channel(lambda c0, c1: xp.maximum(xc[c0:c1], 0, out=yc[c0:c1]), xc.shape[0], x.nbytes)
            y = F.nchw(yc)
        else:
            y = xp.maximum(x, 0, out=x if self.inplace else None)
        self._y = y if grad_enabled() else None
        return y

    def backward(self, dy: Any) -> Any:
        y, self._y = self._y, None
        xp = backend.get_array_module(dy)
        if dy.ndim == 4:
            dyc, yc = F.chwn(dy), F.chwn(y)
            dxc = xp.empty(yc.shape, dtype=dy.dtype)
            F.by_channel(lambda c0, c1: xp.multiply(dyc[c0:c1], yc[c0:c1] > 0, out=dxc[c0:c1]),
                         yc.shape[0], dy.nbytes)
            return F.nchw(dxc)
        return xp.multiply(dy, y > 0)
