"""Element-wise activations."""
from __future__ import annotations

from typing import Any

from .. import backend
from .module import Module, grad_enabled


class ReLU(Module):
    """max(x, 0); backward passes the gradient where the output is positive."""

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None

    def forward(self, x: Any) -> Any:
        y = backend.get_array_module(x).maximum(x, 0)
        self._y = y if grad_enabled() else None
        return y

    def backward(self, dy: Any) -> Any:
        y, self._y = self._y, None
        return backend.get_array_module(dy).multiply(dy, y > 0)
