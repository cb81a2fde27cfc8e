"""What the models share: layers applied in a fixed order, backward in reverse."""
from __future__ import annotations

from .. import nn
from ..backend import Array


class ChainModel(nn.Module):
    """A model whose forward is its ``_order`` list of modules applied in turn (named attributes, so
    state-dict keys read ``conv1.weight``, ``layer2.0.bn1.running_mean``, ...)."""

    _order: list[nn.Module]

    def forward(self, x: Array) -> Array:
        for m in self._order:
            x = m.forward(x)
        return x

    def backward(self, dy: Array) -> Array | None:
        for m in reversed(self._order):
            if dy is None:                  # nothing before this point trains (``skip_input_gradient``)
                break
            dy = m.backward(dy)
        return dy
