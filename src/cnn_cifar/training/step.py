"""One training step, the same for the trainer and the benchmarks."""
from __future__ import annotations

import math

from ..backend import Array
from ..nn import Module, SoftmaxCrossEntropy
from ..optim import Optimizer


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stops and existing checkpoints are left alone."""


def train_step(model: Module, criterion: SoftmaxCrossEntropy, optimizer: Optimizer, x: Array,
               y: Array) -> tuple[float, Array]:
    """zero_grad, forward, loss, backward, update; returns (loss, logits).

    A non-finite loss raises NonFiniteLoss before backward, so the parameters are left as they were.
    """
    optimizer.zero_grad()
    logits = model(x)
    loss = criterion(logits, y)
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss}")
    model.backward(criterion.backward())
    optimizer.step()
    return loss, logits
