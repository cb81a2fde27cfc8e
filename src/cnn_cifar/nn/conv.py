"""2-D convolution by im2col and matrix multiplies (per group, per cache-sized tile of output pixels)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .. import backend, runtime
from ..backend import Array, get_array_module
from . import amp, init, kernels
from .depthwise import depthwise_backward, depthwise_forward
from .im2col import ConvGeometry, Tile, col2im_add, cols_shape, im2col, tiles
from .layout import check_4d, chwn, chwn_contiguous, nchw
from .module import Module, Parameter


def pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair (PyTorch's _pair), with a clear error otherwise."""
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


class Conv2d(Module):
    """PyTorch-compatible Conv2d: weight (out, in/groups, kh, kw), optional bias (out,).

    Forward builds the (C*kh*kw, Ho*Wo*N) column matrix with kh*kw slice copies, one cache-sized tile
    of output pixels at a time (see im2col.tiles), and multiplies each tile by the (out, C*kh*kw)
    weight matrix; columns are never kept (they are kh*kw times the input).
    Stride-1 backward takes both gradients from one column matrix of dy (see _backward_stride1);
    strided backward rebuilds the columns of x for dW and scatters the column gradient with col2im.
    A depthwise conv (groups == in == out channels) takes the fast path of depthwise.py instead.
    On a GPU the column matrix is built whole by one kernel and the input gradient gathered by another
    (kernels.im2col_gpu / col2im_gpu): a handful of launches per direction instead of kh*kw copies.
    Under ``amp.autocast`` input and weight are cast to float16 and the output is float16; the weight
    gradient is accumulated into the float32 ``weight.grad``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype: type = init.DEFAULT_DTYPE):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError(f"Conv2d needs positive channels and groups, got in={in_channels}, "
                             f"out={out_channels}, groups={groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError("Conv2d: kernel_size, stride and dilation must be >= 1 and padding >= 0")
        self.geometry = ConvGeometry(*self.kernel_size, *self.stride, *self.padding, *self.dilation)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw              # PyTorch's default initialisation
        self.weight = Parameter(init.default_uniform((out_channels, in_channels // groups, kh, kw), fan_in, rng,
                                                     dtype))
        self.bias = Parameter(init.default_uniform((out_channels,), fan_in, rng, dtype)) if bias else None
        # False on a network's first layer: the gradient w.r.t. the images is not needed for training
        # (like an input tensor without requires_grad in PyTorch); backward then returns None.
        self.needs_input_grad = True
        # groups == in == out channels runs as depthwise.py's shifted multiply-adds (False: the general path)
        self.depthwise_kernel = True

    @property
    def depthwise(self) -> bool:
        """Whether this conv runs on the depthwise fast path."""
        return self.depthwise_kernel and 1 < self.groups == self.in_channels == self.out_channels

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")

    def _out_size(self, x: Array) -> tuple[int, int]:
        check_4d(self, x, self.in_channels)
        h, w = x.shape[2:]
        ho, wo = self.geometry.out_size(h, w)
        if ho < 1 or wo < 1:
            ph, pw = self.padding
            raise ValueError(f"{self.label}: kernel {self.kernel_size} (dilation {self.dilation}) is larger "
                             f"than the padded input {(h + 2 * ph, w + 2 * pw)} (input shape {tuple(x.shape)})")
        return ho, wo

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        ho, wo = self._out_size(x)
        x, weight = amp.lower(x), amp.lower(self.weight.data)       # float16 under autocast
        xc = chwn_contiguous(x)              # a loader's NCHW images are transposed here, once
        c, n = xc.shape[0], xc.shape[3]
        g, o, geo = self.groups, self.out_channels, self.geometry
        if not runtime.is_host(xc) and not self.depthwise:
            y = self._forward_device(xc, weight, ho, wo)
            self.save_for_backward(xc, weight, ho, wo)
            return nchw(y)
        with runtime.padded(xc, *self.padding) as xpad:
            if self.depthwise:
                y = depthwise_forward(xpad, weight, geo, ho, wo)
            else:
                w2 = weight.reshape(g, o // g, -1)
                y = xp.empty((o, ho, wo, n), dtype=x.dtype)

                def work(run: list[Tile]) -> None:
                    for t in run:
                        with runtime.workspace(xp, "cols", cols_shape(c, geo, t, n), x.dtype) as buf:
                            cols = im2col(xpad, geo, t, buf)                      # (C*kh*kw, pixels*N)
                            xp.matmul(w2, cols.reshape(g, -1, cols.shape[1]), out=t.of(y).reshape(g, o // g, -1))
                runtime.in_runs(work, tiles(ho, wo, c * geo.taps * n * xc.itemsize, xc), xc)
        if self.bias is not None:
            y += self.bias.data[:, None, None, None]
        self.save_for_backward(xc, weight, ho, wo)
        return nchw(y)

    def _geometry_args(self, xc: Array, ho: int, wo: int) -> tuple[int, ...]:
        c, h, w, n = xc.shape
        g = self.geometry
        return (h, w, n, ho, wo, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)

    @contextmanager
    def _cols_device(self, xc: Array, ho: int, wo: int) -> Iterator[Array]:
        """Borrow the whole (C*kh*kw, Ho*Wo*N) column matrix of contiguous xc, filled in one kernel. The
        buffer is the thread's reusable "cols" workspace (no allocation per call; on one CUDA stream the
        next layer's kernels run after this one's matrix multiplies have read it)."""
        shape = (xc.shape[0] * self.geometry.taps, ho * wo * xc.shape[3])
        with runtime.workspace(get_array_module(xc), "cols", shape, xc.dtype) as cols:
            yield kernels.im2col_gpu(xc, *self._geometry_args(xc, ho, wo), cols)

    def _forward_device(self, xc: Array, weight: Array, ho: int, wo: int) -> Array:
        """y (O, Ho, Wo, N): one im2col kernel and one matrix multiply (2-D when groups == 1), plus the bias."""
        xp = get_array_module(xc)
        g, o, n = self.groups, self.out_channels, xc.shape[3]
        with self._cols_device(xc, ho, wo) as cols:
            if g == 1:
                y = xp.matmul(weight.reshape(o, -1), cols)
            else:
                y = xp.matmul(weight.reshape(g, o // g, -1), cols.reshape(g, -1, cols.shape[1]))
        y = y.reshape(o, ho, wo, n)
        if self.bias is not None:
            y += self.bias.data[:, None, None, None]
        return y

    def _backward_device(self, xc: Array, weight: Array, dyc: Array, ho: int, wo: int) -> Array | None:
        """Both gradients from the recomputed columns of x: dW = dy cols^T, dx = col2im(W^T dy)."""
        xp = get_array_module(dyc)
        g, o = self.groups, self.out_channels
        dy2 = chwn_contiguous(nchw(dyc)).reshape(o, -1)              # our layers' gradients: no copy
        with self._cols_device(xc, ho, wo) as cols:
            if g == 1 and dy2.dtype == self.weight.grad.dtype:     # dW += dy cols^T: cuBLAS adds in place (beta 1)
                backend.cublas().gemm("N", "T", dy2, cols, out=self.weight.grad.reshape(o, -1), beta=1.0)
            elif g == 1:                                            # float16 under autocast into float32 grads
                self.weight.grad += xp.matmul(dy2, cols.T).reshape(self.weight.grad.shape)
            else:
                dy3, cols3 = dy2.reshape(g, o // g, -1), cols.reshape(g, -1, cols.shape[1])
                self.weight.grad += xp.matmul(dy3, cols3.transpose(0, 2, 1)).reshape(self.weight.grad.shape)
        if not self.needs_input_grad:
            return None
        if g == 1:
            dcols = xp.matmul(weight.reshape(o, -1).T, dy2)
        else:
            dcols = xp.matmul(weight.reshape(g, o // g, -1).transpose(0, 2, 1), dy2.reshape(g, o // g, -1))
        dx = kernels.col2im_gpu(dcols, *self._geometry_args(xc, ho, wo), size=xc.size)    # allocates dx
        return nchw(dx.reshape(xc.shape))

    def _backward_stride1(self, xc: Array, weight: Array, dy: Array) -> Array:
        """Both gradients of a stride-1 conv from the columns of dy alone (no im2col of x).

        dcols = im2col(dy) with "full" padding (qh, qw) has rows (o, i, j). The input gradient is the
        convolution of dy with the flipped, channel-transposed kernel, W' @ dcols, and the weight
        gradient needs no columns of x either: row (o, i, j) of dcols @ x^T is dW[o, :, kh-1-i, kw-1-j].
        """
        xp = get_array_module(dy)
        c, h, w, n = xc.shape
        g, o, geo = self.groups, self.out_channels, self.geometry
        kh, kw = self.kernel_size
        og, cg = o // g, c // g
        qh, qw = geo.flipped_padding()
        flip = ConvGeometry(kh, kw, 1, 1, qh, qw, geo.dh, geo.dw)
        wt = weight.reshape(g, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        wt = wt.reshape(g, cg, og * kh * kw)
        dx = xp.empty((c, h, w, n), dtype=dy.dtype)
        with runtime.padded(chwn(dy), qh, qw) as dypad:
            def work(run: list[Tile]) -> Array:                        # returns this run's dW part
                gw = xp.zeros((g, og * kh * kw, cg), dtype=self.weight.grad.dtype)
                for t in run:
                    with runtime.workspace(xp, "dcols", cols_shape(o, flip, t, n), dy.dtype) as buf:
                        dcols_g = im2col(dypad, flip, t, buf).reshape(g, og * kh * kw, -1)
                        x_g = t.of(xc).reshape(g, cg, -1)                    # (g, cg, pixels*N)
                        gw += xp.matmul(dcols_g, x_g.transpose(0, 2, 1))
                        xp.matmul(wt, dcols_g, out=t.of(dx).reshape(g, cg, -1))
                return gw
            gw = sum(runtime.in_runs(work, tiles(h, w, o * geo.taps * n * dy.itemsize, dy), dy))
        gw = gw.reshape(g, og, kh, kw, cg)[:, :, ::-1, ::-1].transpose(0, 1, 4, 2, 3)
        self.weight.grad += gw.reshape(self.weight.grad.shape)
        return nchw(dx)

    def backward(self, dy: Array) -> Array | None:
        xc, weight, ho, wo = self.saved()
        xp = get_array_module(dy)
        dy = amp.like(dy, xc)                                       # float32 into an autocast layer
        c, h, w, n = xc.shape
        g, o, geo = self.groups, self.out_channels, self.geometry
        og, cg = o // g, c // g
        dyc = chwn(dy)                                              # (O, ho, wo, N)
        if self.bias is not None:
            self.bias.grad += dyc.sum(axis=(1, 2, 3), dtype=self.bias.grad.dtype)
        if not runtime.is_host(xc) and not self.depthwise:
            return self._backward_device(xc, weight, dyc, ho, wo)
        if self.depthwise:
            ph, pw = self.padding
            with runtime.padded(xc, ph, pw) as xpad:
                dw, dxpad = depthwise_backward(xpad, dyc, weight, geo, self.needs_input_grad)
            self.weight.grad += dw
            return None if dxpad is None else nchw(dxpad[:, ph:ph + h, pw:pw + w])
        qh, qw = geo.flipped_padding()
        if self.needs_input_grad and self.stride == (1, 1) and qh >= 0 and qw >= 0:
            return self._backward_stride1(xc, weight, dy)
        # General case: dW from the columns of x; dx (if wanted) as the column gradient W^T @ dy,
        # scattered back into the padded input with col2im.
        ph, pw = self.padding
        w2 = weight.reshape(g, og, -1)
        k = cg * geo.taps
        dxpad = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=dy.dtype) if self.needs_input_grad else None
        with runtime.padded(xc, ph, pw) as xpad:
            def work(run: list[Tile]) -> Array:                        # returns this run's dW part
                gw = xp.zeros((g, og, k), dtype=self.weight.grad.dtype)
                for t in run:
                    dy_g = t.of(dyc).reshape(g, og, -1)                   # (g, og, pixels*N)
                    shape = cols_shape(c, geo, t, n)
                    with runtime.workspace(xp, "cols", shape, dy.dtype) as buf:
                        cols = im2col(xpad, geo, t, buf)
                        gw += xp.matmul(dy_g, cols.reshape(g, k, -1).transpose(0, 2, 1))
                    if dxpad is not None:
                        with runtime.workspace(xp, "dcols", shape, dy.dtype) as dcols:
                            xp.matmul(w2.transpose(0, 2, 1), dy_g, out=dcols.reshape(g, k, -1))
                            col2im_add(dcols, dxpad, geo, t)
                return gw
            # Runs may go in parallel unless their col2im scatters overlap (a kernel larger than the stride).
            disjoint = dxpad is None or ((geo.kh - 1) * geo.dh < geo.sh and (geo.kw - 1) * geo.dw < geo.sw)
            gw = sum(runtime.in_runs(work, tiles(ho, wo, c * geo.taps * n * dy.itemsize, dy), dy,
                                     parallel=disjoint))
        self.weight.grad += gw.reshape(self.weight.grad.shape)
        if dxpad is None:
            return None
        return nchw(dxpad[:, ph:ph + h, pw:pw + w])
