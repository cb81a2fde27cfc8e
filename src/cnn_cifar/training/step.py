"""One training step, the same for the trainer and the benchmarks."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ..backend import Array, get_array_module
from ..distributed import DataParallel
from ..nn import Module, SoftmaxCrossEntropy, autocast
from ..optim import GradScaler, Optimizer, clip_grad_norm_
from .metrics import correct_count


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stops and existing checkpoints are left alone."""


def train_step(model: Module, criterion: SoftmaxCrossEntropy, optimizer: Optimizer, x: Array,
               y: Array, clip_grad_norm: float | None = None, parallel: DataParallel | None = None,
               stop_signum: int | None = None, scaler: GradScaler | None = None,
               defer: bool = False) -> tuple[float | Array, Array]:
    """zero_grad, forward, loss, backward, [clip the gradients' global L2 norm to ``clip_grad_norm``],
    update; returns (loss, logits).

    A non-finite loss (or gradient norm, when clipping) raises NonFiniteLoss before the update, so the
    parameters are left as they were.

    With an enabled ``scaler`` (mixed precision) the forward runs under ``autocast``, the loss gradient is
    scaled before backward and the gradients unscaled (and checked) before clipping; a step whose gradients
    overflowed is skipped and the scale backed off, as with PyTorch's GradScaler (no error: overflow is
    how the scale finds its level).

    With ``parallel`` (a distributed.DataParallel; ``x``, ``y`` this rank's shard) the loss returned is the
    global batch's, agreed by all ranks with their pending stop requests (``stop_signum``: this rank's) before
    backward, so every rank raises or carries on together; the gradients are averaged over ranks before
    clipping and the update.

    With ``defer`` (a GPU, one process, no scaler, no clipping) nothing is read back: the loss is returned as
    a 0-d device array, and a non-finite one skips the update on the device (``optimizer.step(only_if=...)``)
    instead of raising; the caller checks the losses when it reads them (the Trainer does, every few steps).
    """
    amp = scaler is not None and scaler.enabled
    optimizer.zero_grad()
    with autocast(amp):
        logits = model(x)
    if defer:
        if amp or clip_grad_norm or parallel is not None:
            raise ValueError("train_step(defer=True) is for one process without loss scaling or clipping")
        loss_array = criterion.loss_array(logits, y)
        model.backward(criterion.backward())
        optimizer.step(only_if=get_array_module(loss_array).isfinite(loss_array))
        return loss_array, logits
    loss = criterion(logits, y)
    if parallel is not None:
        loss = parallel.agree(loss, correct_count(logits, y), len(logits), stop_signum)
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss}")
    dlogits = criterion.backward()
    # Under loss scaling float16 overflow is an expected event (the step is skipped): no NumPy warnings.
    with np.errstate(over="ignore", invalid="ignore") if amp else contextlib.nullcontext():
        model.backward(scaler.scale(dlogits) if amp else dlogits)
    if parallel is not None:
        parallel.sync_gradients()
    overflow = scaler.unscale_(optimizer) if amp else False
    if clip_grad_norm and not overflow:
        norm = clip_grad_norm_(optimizer.buffers, clip_grad_norm)       # the flat gradient buffers
        if not math.isfinite(norm):
            raise NonFiniteLoss(f"gradient norm became {norm}")
    if amp:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss, logits
