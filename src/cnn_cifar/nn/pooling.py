"""Max, average and global average pooling over (N, C, H, W), by kh*kw strided slices."""
from __future__ import annotations

from typing import Iterator

from .. import runtime
from ..backend import Array, get_array_module
from .conv import pair
from .im2col import ConvGeometry
from .layout import check_4d, chwn, nchw
from .module import Module, grad_enabled


class _Pool2d(Module):
    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride if stride is not None else kernel_size, "stride")
        self.padding = pair(padding, "padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{type(self).__name__}: kernel_size and stride must be >= 1, padding >= 0")
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half "
                             f"the kernel {self.kernel_size}")
        self.geometry = ConvGeometry(*self.kernel_size, *self.stride, *self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _out_size(self, x: Array) -> tuple[int, int]:
        check_4d(self, x)
        ho, wo = self.geometry.out_size(*x.shape[2:])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label}: kernel {self.kernel_size} is larger than the padded input "
                             f"(input shape {tuple(x.shape)}, padding {self.padding})")
        return ho, wo

    def _taps(self, ho: int, wo: int) -> Iterator[tuple[int, tuple[slice, slice]]]:
        g = self.geometry
        for i in range(g.kh):
            for j in range(g.kw):
                yield i * g.kw + j, g.window(i, j, ho, wo)


class MaxPool2d(_Pool2d):
    """Max over each window; the gradient goes to the first maximum (as PyTorch on CPU)."""

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        ho, wo = self._out_size(x)
        keep = grad_enabled()                        # the argmax is only needed for backward
        taps = list(self._taps(ho, wo))
        with runtime.padded(chwn(x), *self.padding, value=-xp.inf) as xpad:
            c, n = xpad.shape[0], xpad.shape[3]
            out = xp.empty((c, ho, wo, n), dtype=x.dtype)
            idx = xp.zeros(out.shape, dtype=xp.int8 if self.geometry.taps < 128 else xp.int16) if keep else None

            def run(c0: int, c1: int) -> None:
                for b0 in range(c0, c1, _block_channels(out)):
                    cb = slice(b0, min(b0 + _block_channels(out), c1))
                    o = out[cb]
                    for k, (hs, ws) in taps:
                        tap = xpad[cb, hs, ws]
                        if k == 0:
                            o[...] = tap
                            continue
                        if keep:
                            i = idx[cb]
                            better = tap > o                    # strict: ties keep the first maximum
                            i += better * (i.dtype.type(k) - i)  # i = k where better (faster than masked store)
                        xp.maximum(o, tap, out=o)
            runtime.by_channel(run, xpad)
            self.save_for_backward(idx, x.shape, xpad.shape)
        return nchw(out)

    def backward(self, dy: Array) -> Array:
        idx, xshape, pshape = self.saved()
        xp = get_array_module(dy)
        n, c, h, w = xshape
        ph, pw = self.padding
        dyc = chwn(dy)
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
        return nchw(dx[:, ph:ph + h, pw:pw + w])


def _block_channels(out: Array) -> int:
    """Channels per block of max-pooling's forward passes: about 256K output values, so a block's temporaries
    stay in cache while its taps are compared."""
    return max(1, (1 << 18) // max(1, out[0].size))


class AvgPool2d(_Pool2d):
    """Mean over each window; zero padding counts towards the mean (PyTorch's default)."""

    def forward(self, x: Array) -> Array:
        ho, wo = self._out_size(x)
        out = None
        with runtime.padded(chwn(x), *self.padding) as xpad:
            for _, (hs, ws) in self._taps(ho, wo):
                out = xpad[:, hs, ws].copy() if out is None else out.__iadd__(xpad[:, hs, ws])
            self.save_for_backward(x.shape, xpad.shape)
        out *= 1.0 / self.geometry.taps
        return nchw(out)

    def backward(self, dy: Array) -> Array:
        xshape, pshape = self.saved()
        xp = get_array_module(dy)
        n, c, h, w = xshape
        ph, pw = self.padding
        g = chwn(dy) * (1.0 / self.geometry.taps)
        dx = xp.zeros(pshape, dtype=dy.dtype)
        for _, (hs, ws) in self._taps(*g.shape[1:3]):
            dx[:, hs, ws] += g
        return nchw(dx[:, ph:ph + h, pw:pw + w])


class GlobalAvgPool2d(Module):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    def forward(self, x: Array) -> Array:
        check_4d(self, x)
        self.save_for_backward(tuple(x.shape))
        return chwn(x).mean(axis=(1, 2)).T

    def backward(self, dy: Array) -> Array:
        (n, c, h, w), = self.saved()
        xp = get_array_module(dy)
        dx = xp.empty((c, h, w, n), dtype=dy.dtype)
        dx[...] = (dy.T * (1.0 / (h * w)))[:, None, None, :]
        return nchw(dx)
