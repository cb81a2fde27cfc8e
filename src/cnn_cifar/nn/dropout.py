"""Inverted dropout: scales kept units by 1/(1-p) in training, identity in eval.

``p`` is read at every call, so a dropout schedule can change it between epochs.
"""
from __future__ import annotations

from typing import Any

from .. import backend
from . import random as nnrandom
from .module import Module


class Dropout(Module):
    """Zero each element with probability p."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.set_p(p)
        self._mask: Any = None

    def set_p(self, p: float) -> None:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1), got {p}")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        xp = backend.get_array_module(x)
        u = nnrandom.generator().random(self._mask_shape(x), dtype=xp.float32)
        mask = (u >= self.p).astype(x.dtype)
        mask *= 1.0 / (1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, dy: Any) -> Any:
        mask, self._mask = self._mask, None
        return dy if mask is None else dy * mask


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability p."""

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        if x.ndim != 4:
            raise ValueError(f"{self.label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        return (x.shape[0], x.shape[1], 1, 1)
