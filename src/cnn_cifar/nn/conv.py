"""2-D convolution by im2col and matrix multiplies (per group, per cache-sized tile of output pixels)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from . import functional as F
from . import init
from .module import Module, Parameter, grad_enabled


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


class Conv2d(Module):
    """PyTorch-compatible Conv2d: weight (out, in/groups, kh, kw), optional bias (out,).

    Forward builds the (C*kh*kw, Ho*Wo*N) column matrix with kh*kw slice copies, one cache-sized tile
    of output pixels at a time (see functional.conv_tiles), and multiplies each tile by the
    (out, C*kh*kw) weight matrix; columns are never kept (they are kh*kw times the input).
    Stride-1 backward takes both gradients from one column matrix of dy (see _backward_stride1);
    strided backward rebuilds the columns of x for dW and scatters the column gradient with col2im.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype: Any = init.DEFAULT_DTYPE):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError(f"Conv2d needs positive channels and groups, got in={in_channels}, "
                             f"out={out_channels}, groups={groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError("Conv2d: kernel_size, stride and dilation must be >= 1 and padding >= 0")
        kh, kw = self.kernel_size
        fan_out = out_channels // groups * kh * kw
        self.weight = Parameter(init.kaiming_normal((out_channels, in_channels // groups, kh, kw),
                                                    fan_out, rng, dtype))
        self.bias = Parameter(init.zeros((out_channels,), dtype)) if bias else None
        # False on a network's first layer: the gradient w.r.t. the images is not needed for training
        # (like an input tensor without requires_grad in PyTorch); backward then returns None.
        self.needs_input_grad = True
        self._cache: tuple | None = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")

    def _geometry(self, x: Any) -> tuple[int, int]:
        F.check_4d(self, x, self.in_channels)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        h, w = x.shape[2:]
        ho, wo = F.out_size(h, kh, sh, ph, dh), F.out_size(w, kw, sw, pw, dw)
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label}: kernel {self.kernel_size} (dilation {self.dilation}) is larger "
                             f"than the padded input {(h + 2 * ph, w + 2 * pw)} (input shape {tuple(x.shape)})")
        return ho, wo

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        ho, wo = self._geometry(x)
        xc = F.chwn_contiguous(x)              # a loader's NCHW images are transposed here, once
        c, n = xc.shape[0], xc.shape[3]
        g, o = self.groups, self.out_channels
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        xpad = F.padded(xc, ph, pw)
        w2 = self.weight.data.reshape(g, o // g, -1)
        y = xp.empty((o, ho, wo, n), dtype=x.dtype)

        def work(run: list[F.Tile]) -> None:
            for t in run:
                cols = F.im2col(xpad, kh, kw, sh, sw, dh, dw, t)               # (C*kh*kw, pixels*N)
                xp.matmul(w2, cols.reshape(g, -1, cols.shape[1]), out=t.of(y).reshape(g, o // g, -1))
        F.run_tiles(work, F.conv_tiles(ho, wo, c * kh * kw * n * xc.itemsize))
        if self.bias is not None:
            y += self.bias.data[:, None, None, None]
        self._cache = (xc, ho, wo) if grad_enabled() else None
        return F.nchw(y)

    def _backward_stride1(self, xp: Any, xc: Any, dy: Any, qh: int, qw: int) -> Any:
        """Both gradients of a stride-1 conv from the columns of dy alone (no im2col of x).

        dcols = im2col(dy) with "full" padding (qh, qw) has rows (o, i, j). The input gradient is the
        convolution of dy with the flipped, channel-transposed kernel, W' @ dcols, and the weight
        gradient needs no columns of x either: row (o, i, j) of dcols @ x^T is dW[o, :, kh-1-i, kw-1-j].
        """
        c, h, w, n = xc.shape
        g, o = self.groups, self.out_channels
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        og, cg = o // g, c // g
        wt = self.weight.data.reshape(g, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        wt = wt.reshape(g, cg, og * kh * kw)
        dypad = F.padded(F.chwn(dy), qh, qw)
        dx = xp.empty((c, h, w, n), dtype=dy.dtype)

        def work(run: list[F.Tile]) -> Any:                                # returns this run's dW part
            gw = xp.zeros((g, og * kh * kw, cg), dtype=dy.dtype)
            for t in run:
                dcols = F.im2col(dypad, kh, kw, 1, 1, dh, dw, t, role="dcols")
                dcols_g = dcols.reshape(g, og * kh * kw, -1)             # (g, og*kh*kw, pixels*N)
                x_g = t.of(xc).reshape(g, cg, -1)                        # (g, cg, pixels*N)
                gw += xp.matmul(dcols_g, x_g.transpose(0, 2, 1))
                xp.matmul(wt, dcols_g, out=t.of(dx).reshape(g, cg, -1))
            return gw
        gw = sum(F.run_tiles(work, F.conv_tiles(h, w, o * kh * kw * n * dy.itemsize)))
        gw = gw.reshape(g, og, kh, kw, cg)[:, :, ::-1, ::-1].transpose(0, 1, 4, 2, 3)
        self.weight.grad += gw.reshape(self.weight.grad.shape)
        return F.nchw(dx)

    def backward(self, dy: Any) -> Any:
        if self._cache is None:
            raise RuntimeError(f"{self.label}: backward called without a forward that kept its input")
        xp = backend.get_array_module(dy)
        xc, ho, wo = self._cache
        self._cache = None
        c, h, w, n = xc.shape
        g, o = self.groups, self.out_channels
        og, cg = o // g, c // g
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        dyc = F.chwn(dy)                                              # (O, ho, wo, N)
        if self.bias is not None:
            self.bias.grad += dyc.sum(axis=(1, 2, 3))
        qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        if self.needs_input_grad and (sh, sw) == (1, 1) and qh >= 0 and qw >= 0:
            return self._backward_stride1(xp, xc, dy, qh, qw)
        # General case: dW from the columns of x; dx (if wanted) as the column gradient W^T @ dy,
        # scattered back into the padded input with col2im.
        xpad = F.padded(xc, ph, pw)
        w2 = self.weight.data.reshape(g, og, -1)
        dxpad = xp.zeros(xpad.shape, dtype=dy.dtype) if self.needs_input_grad else None

        def work(run: list[F.Tile]) -> Any:                                # returns this run's dW part
            gw = xp.zeros((g, og, cg * kh * kw), dtype=dy.dtype)
            for t in run:
                dy_g = t.of(dyc).reshape(g, og, -1)                       # (g, og, pixels*N)
                cols = F.im2col(xpad, kh, kw, sh, sw, dh, dw, t)
                gw += xp.matmul(dy_g, cols.reshape(g, cg * kh * kw, -1).transpose(0, 2, 1))
                if dxpad is not None:
                    dcols = F.scratch(xp, "dcols", (c * kh * kw, cols.shape[1]), dy.dtype)
                    xp.matmul(w2.transpose(0, 2, 1), dy_g, out=dcols.reshape(g, cg * kh * kw, -1))
                    F.col2im_add(dcols, dxpad, kh, kw, sh, sw, dh, dw, t)
            return gw
        # Runs may go in parallel unless their col2im scatters overlap (a kernel larger than the stride).
        disjoint = dxpad is None or ((kh - 1) * dh < sh and (kw - 1) * dw < sw)
        gw = sum(F.run_tiles(work, F.conv_tiles(ho, wo, c * kh * kw * n * dy.itemsize), parallel=disjoint))
        self.weight.grad += gw.reshape(self.weight.grad.shape)
        if dxpad is None:
            return None
        return F.nchw(dxpad[:, ph:ph + h, pw:pw + w])
