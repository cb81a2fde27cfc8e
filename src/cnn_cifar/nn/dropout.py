"""Inverted dropout: scales kept units by 1/(1-p) in training, identity in eval.

``p`` is read at every call, so a dropout schedule can change it between epochs (``set_dropout``).
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from . import random as nnrandom
from .module import Module


class Dropout(Module):
    """Zero each element with probability p."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.set_p(p)

    def set_p(self, p: float) -> None:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1), got {p}")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _mask_shape(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape)

    def forward(self, x: Array) -> Array:
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)              # identity: backward passes dy through
            return x
        xp = get_array_module(x)
        u = nnrandom.uniform(xp, self._mask_shape(x), xp.float32)
        mask = (u >= self.p).astype(x.dtype)
        mask *= 1.0 / (1.0 - self.p)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, dy: Array) -> Array:
        mask, = self.saved()
        return dy if mask is None else dy * mask


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability p."""

    def _mask_shape(self, x: Array) -> tuple[int, ...]:
        if x.ndim != 4:
            raise ValueError(f"{self.label} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        return (x.shape[0], x.shape[1], 1, 1)


def set_dropout(model: Module, p: float) -> None:
    """Set the drop probability of every dropout layer in ``model`` (used by dropout schedules)."""
    for m in model.modules():
        if isinstance(m, Dropout):
            m.set_p(p)


def dropout_rate(model: Module) -> float | None:
    """The drop probability of the first dropout layer in ``model``, or None if it has none."""
    for m in model.modules():
        if isinstance(m, Dropout):
            return m.p
    return None
