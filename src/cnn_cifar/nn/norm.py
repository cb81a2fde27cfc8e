"""Batch normalisation (PyTorch semantics: batch statistics in training, running ones in eval)."""
from __future__ import annotations

from typing import Any

from .. import backend
from . import functional as F
from . import init
from .module import Module, Parameter, grad_enabled


class _BatchNorm(Module):
    """Shared core: normalises a (C, M) matrix of channels by columns."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: Any = init.DEFAULT_DTYPE):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__} needs num_features > 0, got {num_features}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(init.ones((num_features,), dtype))
        self.bias = Parameter(init.zeros((num_features,), dtype))
        self.register_buffer("running_mean", init.zeros((num_features,), dtype))
        self.register_buffer("running_var", init.ones((num_features,), dtype))
        self.register_buffer("num_batches_tracked", backend.xp.zeros((), dtype="int64"))
        self._cache: tuple | None = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _forward_rows(self, x2: Any) -> Any:
        """x2: (C, M) -> normalised (C, M)."""
        xp = backend.get_array_module(x2)
        m = x2.shape[1]
        if self.training:
            if m < 2:
                raise ValueError(f"{self.label}: training needs more than one value per channel, "
                                 f"got input rows of shape {tuple(x2.shape)}")
            mean = x2.mean(axis=1)
            xc = x2 - mean[:, None]
            var = xp.mean(xc * xc, axis=1)
            mom = self.momentum
            self.running_mean = (1 - mom) * self.running_mean + mom * mean
            self.running_var = (1 - mom) * self.running_var + mom * var * (m / (m - 1))
            self.num_batches_tracked = self.num_batches_tracked + 1
        else:
            mean, var, xc = self.running_mean, self.running_var, None
        invstd = 1.0 / xp.sqrt(var + self.eps)
        if xc is None:
            xc = x2 - mean[:, None]
        xc *= invstd[:, None]                       # xc is now xhat, a fresh array we own
        y = xc * self.weight.data[:, None]
        y += self.bias.data[:, None]
        self._cache = (xc, invstd, self.training) if grad_enabled() else None
        return y

    def _backward_rows(self, dy2: Any) -> Any:
        if self._cache is None:
            raise RuntimeError(f"{self.label}: backward called without a forward that kept its state")
        xhat, invstd, training = self._cache
        self._cache = None
        xp = backend.get_array_module(dy2)
        dbeta = dy2.sum(axis=1)
        dgamma = xp.einsum("cm,cm->c", dy2, xhat)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        scale = self.weight.data * invstd
        if not training:
            return dy2 * scale[:, None]
        m = dy2.shape[1]
        # dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat))
        dx = dy2 * scale[:, None]
        dx -= (scale * dbeta / m)[:, None]
        dx -= xhat * (scale * dgamma / m)[:, None]
        return dx


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of (N, C, H, W) over N, H and W."""

    def forward(self, x: Any) -> Any:
        F.check_4d(self, x, self.num_features)
        n, c, h, w = x.shape
        y = self._forward_rows(F.rows(x))
        return F.nchw(y.reshape(c, n, h, w))

    def backward(self, dy: Any) -> Any:
        n, c, h, w = dy.shape
        return F.nchw(self._backward_rows(F.rows(dy)).reshape(c, n, h, w))


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of (N, C) over N."""

    def forward(self, x: Any) -> Any:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.label} expects input (N, {self.num_features}), got shape {tuple(x.shape)}")
        return self._forward_rows(x.T).T

    def backward(self, dy: Any) -> Any:
        return self._backward_rows(dy.T).T
