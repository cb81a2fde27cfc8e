"""Max, average and global average pooling over (N, C, H, W), by kh*kw strided slices."""
from __future__ import annotations

from typing import Any

from .. import backend
from . import functional as F
from .conv import _pair
from .module import Module, grad_enabled


class _Pool2d(Module):
    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{type(self).__name__}: kernel_size and stride must be >= 1, padding >= 0")
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half "
                             f"the kernel {self.kernel_size}")
        self._cache: tuple | None = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _geometry(self, x: Any) -> tuple[int, int]:
        F.check_4d(self, x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = F.out_size(x.shape[2], kh, sh, ph, 1), F.out_size(x.shape[3], kw, sw, pw, 1)
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label}: kernel {self.kernel_size} is larger than the padded input "
                             f"(input shape {tuple(x.shape)}, padding {self.padding})")
        return ho, wo

    def _taps(self, ho: int, wo: int):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, F.window(i, j, sh, sw, 1, 1, ho, wo)


class MaxPool2d(_Pool2d):
    """Max over each window; the gradient goes to the first maximum (as PyTorch on CPU)."""

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        ho, wo = self._geometry(x)
        ph, pw = self.padding
        xpad = F.padded(F.chwn(x), ph, pw, value=-xp.inf)
        keep = grad_enabled()                        # the argmax is only needed for backward
        out = idx = None
        for k, (hs, ws) in self._taps(ho, wo):
            tap = xpad[:, hs, ws]
            if out is None:
                out = tap.copy()
                if keep:
                    idx = xp.zeros(out.shape, dtype=xp.int8 if self.kernel_size[0] * self.kernel_size[1] < 128
                                   else xp.int16)
                continue
            if keep:
                better = tap > out                   # strict: ties keep the first maximum
                idx += better * (idx.dtype.type(k) - idx)   # idx = k where better (faster than masked store)
            xp.maximum(out, tap, out=out)
        self._cache = (idx, x.shape, xpad.shape) if keep else None
        return F.nchw(out)

    def backward(self, dy: Any) -> Any:
        xp = backend.get_array_module(dy)
        idx, xshape, pshape = self._cache
        self._cache = None
        n, c, h, w = xshape
        ph, pw = self.padding
        dyc = F.chwn(dy)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho, wo = idx.shape[1:3]
        disjoint = sh >= kh and sw >= kw                   # each input position in at most one window
        tiled = disjoint and (sh, sw) == (kh, kw) and ho * sh == pshape[1] and wo * sw == pshape[2]
        dx = xp.empty(pshape, dtype=dy.dtype) if tiled else xp.zeros(pshape, dtype=dy.dtype)
        for k, (hs, ws) in self._taps(ho, wo):
            if disjoint:
                xp.multiply(dyc, idx == k, out=dx[:, hs, ws])
            else:
                dx[:, hs, ws] += dyc * (idx == k)
        return F.nchw(dx[:, ph:ph + h, pw:pw + w])


class AvgPool2d(_Pool2d):
    """Mean over each window; zero padding counts towards the mean (PyTorch's default)."""

    def forward(self, x: Any) -> Any:
        ho, wo = self._geometry(x)
        ph, pw = self.padding
        xpad = F.padded(F.chwn(x), ph, pw)
        out = None
        for _, (hs, ws) in self._taps(ho, wo):
            out = xpad[:, hs, ws].copy() if out is None else out.__iadd__(xpad[:, hs, ws])
        out *= 1.0 / (self.kernel_size[0] * self.kernel_size[1])
        self._cache = (x.shape, xpad.shape) if grad_enabled() else None
        return F.nchw(out)

    def backward(self, dy: Any) -> Any:
        xp = backend.get_array_module(dy)
        xshape, pshape = self._cache
        self._cache = None
        n, c, h, w = xshape
        ph, pw = self.padding
        g = F.chwn(dy) * (1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        dx = xp.zeros(pshape, dtype=dy.dtype)
        for _, (hs, ws) in self._taps(*g.shape[1:3]):
            dx[:, hs, ws] += g
        return F.nchw(dx[:, ph:ph + h, pw:pw + w])


class GlobalAvgPool2d(Module):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple | None = None

    def forward(self, x: Any) -> Any:
        F.check_4d(self, x)
        self._shape = tuple(x.shape)
        return F.chwn(x).mean(axis=(1, 2)).T

    def backward(self, dy: Any) -> Any:
        xp = backend.get_array_module(dy)
        n, c, h, w = self._shape
        dx = xp.empty((c, h, w, n), dtype=dy.dtype)
        dx[...] = (dy.T * (1.0 / (h * w)))[:, None, None, :]
        return F.nchw(dx)
