"""2-D convolution: the ``Conv2d`` module (parameters, geometry, mixed precision, the bias's gradient) over four
paths.

Each path is a module with the same two functions, forward and backward side by side (``ConvPath``):

- ``conv_host``: NumPy arrays; im2col and matrix multiplies per cache-sized tile of output pixels, spread
  over cores (a stride-1 backward from the columns of dy alone, the general one with col2im);
- ``conv_winograd``: NumPy arrays of wide 3x3 stride-1 layers at large batches (``conv_winograd.applies``):
  Winograd's F(4x4, 3x3), 36 products per 4x4 output tile where im2col makes 144;
- ``conv_device``: CuPy arrays; the whole column matrix built by one kernel, the input gradient gathered by
  another (``kernels.im2col_gpu`` / ``col2im_gpu``);
- ``depthwise``: one input and one output channel per group, on either backend; shifted multiply-adds, no
  column matrix.

``Conv2d.forward`` picks the path once (``Conv2d.path_for``) and saves it; ``backward`` runs the same path.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .. import backend
from ..backend import Array
from . import amp, conv_device, conv_host, conv_winograd, depthwise, init
from .im2col import ConvGeometry
from .layout import check_4d, chwn, chwn_contiguous, nchw
from .module import Module, Parameter


def pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair (PyTorch's _pair), with a clear error otherwise."""
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


class ConvPath(Protocol):
    """What each path module (``conv_host``, ``conv_winograd``, ``conv_device``, ``depthwise``) provides.
    Arrays are in the (C, H, W, N) layout: ``xc`` the contiguous input, ``weight`` the (O, C/groups, kh, kw)
    weight as the forward used it (float16 under autocast), ``dyc`` the output gradient (O, ho, wo, N)."""

    def forward(self, xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int,
                bias: Array | None = None) -> Array:
        """The output (O, ho, wo, N), plus ``bias`` (O,) where given."""

    def backward(self, xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
                 input_grad: bool) -> Array | None:
        """Add dW into ``wgrad`` (the float32 or float64 ``weight.grad``, in place) and return dx (C, H, W, N),
        or None without ``input_grad``."""


class Conv2d(Module):
    """PyTorch-compatible Conv2d: weight (out, in/groups, kh, kw), optional bias (out,).

    The module holds the parameters and the geometry, checks the input, lowers input and weight under
    ``amp.autocast`` (float16 in and out; the weight gradient accumulates into the float32 ``weight.grad``),
    takes the bias's gradient, and leaves the arithmetic, the bias included, to one of four paths (see the module's
    docstring): depthwise for a depthwise conv (groups == in == out channels), else ``conv_winograd`` where
    its rule applies, ``conv_host`` for other NumPy arrays and ``conv_device`` for CuPy ones. A frozen weight
    (``requires_grad`` False) gets no gradient, and with ``needs_input_grad`` False too the backward stops.
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
        # False on a network's first layer (build_model sets it): the gradient w.r.t. the images is not needed
        # for training (like an input tensor without requires_grad in PyTorch); backward then returns None.
        self.needs_input_grad = True

    @property
    def depthwise(self) -> bool:
        """Whether this conv is depthwise (one input and one output channel per group): the depthwise path."""
        return 1 < self.groups == self.in_channels == self.out_channels

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

    def path_for(self, xc: Array) -> ConvPath:
        """The path that convolves ``xc``: the one dispatch decision (backward reuses forward's)."""
        if self.depthwise:
            return depthwise
        if conv_winograd.applies(self.geometry, self.groups, self.in_channels, self.out_channels, xc):
            return conv_winograd
        return conv_host if backend.is_host(xc) else conv_device

    def forward(self, x: Array) -> Array:
        ho, wo = self._out_size(x)
        x, weight = amp.lower(x), amp.lower(self.weight.data)       # float16 under autocast
        xc = chwn_contiguous(x)              # a loader's NCHW images are transposed here, once
        path = self.path_for(xc)
        y = path.forward(xc, weight, self.geometry, self.groups, ho, wo, None if self.bias is None else self.bias.data)
        self.save_for_backward(path, xc, weight)
        return nchw(y)

    def forward_affine(self, x: Array, scale: Array, shift: Array) -> Array:
        """For inference: this convolution followed by the per-channel affine ``y * scale + shift``, as one
        convolution whose weight rows are scaled and whose bias is ``shift`` (plus the scaled bias): an eval
        batch norm folded into the conv before it (``nn.fold``). Nothing is kept for backward; the output is
        the input's dtype."""
        ho, wo = self._out_size(x)
        xc = chwn_contiguous(x)
        weight = (self.weight.data * scale[:, None, None, None]).astype(xc.dtype, copy=False)
        bias = shift if self.bias is None else self.bias.data * scale + shift
        y = self.path_for(xc).forward(xc, weight, self.geometry, self.groups, ho, wo, bias.astype(xc.dtype, copy=False))
        return nchw(y)

    def backward(self, dy: Array) -> Array | None:
        path, xc, weight = self.saved()
        dyc = chwn(amp.like(dy, xc))                                # float32 into an autocast layer; (O, ho, wo, N)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dyc.sum(axis=(1, 2, 3), dtype=self.bias.grad.dtype)
        if not (self.weight.requires_grad or self.needs_input_grad):
            return None                                             # a frozen layer with nothing to pass on
        dx = path.backward(xc, weight, dyc, self.geometry, self.groups, self.weight.grad, self.needs_input_grad)
        return None if dx is None else nchw(dx)
