"""Fully connected layer and Flatten."""
from __future__ import annotations

import numpy as np

from .. import runtime
from ..backend import Array, get_array_module
from . import amp, init
from .layout import chwn, nchw
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b with PyTorch's weight layout (out_features, in_features); in float16 under
    ``amp.autocast`` (the weight gradient still accumulates into the float32 ``weight.grad``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype: type = init.DEFAULT_DTYPE):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear needs positive sizes, got ({in_features}, {out_features})")
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.default_uniform((out_features, in_features), in_features, rng, dtype))
        self.bias = Parameter(init.default_uniform((out_features,), in_features, rng, dtype)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.label} expects input (N, {self.in_features}), got shape {tuple(x.shape)}")
        x, weight = amp.lower(x), amp.lower(self.weight.data)
        y = runtime.matmul(x, weight.T)
        if self.bias is not None:
            y += self.bias.data
        self.save_for_backward(x, weight)
        return y

    def backward(self, dy: Array) -> Array:
        x, weight = self.saved()
        dy = amp.like(dy, x)                        # the loss's float32 gradient into an autocast layer
        self.weight.grad += runtime.matmul(dy.T, x)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0, dtype=self.bias.grad.dtype)
        return runtime.matmul(dy, weight)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)) in C order, as torch.flatten(x, 1)."""

    def forward(self, x: Array) -> Array:
        self.save_for_backward(tuple(x.shape))
        if x.ndim == 4:
            # (C, H, W, N) memory reshaped to (C*H*W, N) already has torch's (c, h, w) feature order;
            # its transpose is the (N, C*H*W) result, free for our own activations (Linear's matmul
            # takes the transposed operand as is).
            return chwn(x).reshape(-1, x.shape[0]).T
        return get_array_module(x).ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, dy: Array) -> Array:
        shape, = self.saved()
        if len(shape) == 4:
            n, c, h, w = shape
            return nchw(dy.T.reshape(c, h, w, n))
        return dy.reshape(shape)


class Mul(Module):
    """y = scale * x, a constant factor (no parameter): the fast CIFAR recipes scale their logits by 1/9."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"{self.scale:g}"

    def forward(self, x: Array) -> Array:
        return x * x.dtype.type(self.scale)

    def backward(self, dy: Array) -> Array:
        return dy * dy.dtype.type(self.scale)
