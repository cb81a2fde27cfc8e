"""Batch norm folded into the convolution before it, for inference on the CPU.

In eval a batch norm is a per-channel ``x * scale + shift`` of its running statistics, so
``bn(conv(x))`` is one convolution whose weight rows are scaled by ``scale`` and whose bias is ``shift``
(``Conv2d.forward_affine``; on the host path the bias rides in the product, against a row of ones). What is
left of the batch norm is its residual sum and ReLU (``finish_folded``): two passes over the output fewer
than the layers one after the other. PyTorch does the same for inference with
``torch.nn.utils.fusion.fuse_conv_bn_eval``; here it happens by itself wherever a block calls ``conv_bn``.

Only where nothing else is needed: eval mode, no autograd (nothing would be kept for backward), host arrays
(a GPU runs batch norm's eval as one kernel already) and no autocast. Otherwise the two layers run as they are.
The results match the unfolded layers' up to float32 rounding (the products' terms are scaled before they
are summed rather than after).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from .. import backend
from ..backend import Array
from . import amp
from .conv import Conv2d
from .module import grad_enabled
from .norm import _BatchNorm


class _Mode(threading.local):
    layer_by_layer = False


_mode = _Mode()


@contextlib.contextmanager
def layer_by_layer() -> Iterator[None]:
    """Within this block (in this thread) ``conv_bn`` calls its two layers one after the other, always: for
    tools that watch each layer's call (the ``--summary`` table)."""
    prev, _mode.layer_by_layer = _mode.layer_by_layer, True
    try:
        yield
    finally:
        _mode.layer_by_layer = prev


def folds(conv: Conv2d, bn: _BatchNorm, x: Array) -> bool:
    """Whether ``conv_bn`` folds ``bn`` into ``conv`` for the input ``x`` (module docstring)."""
    return (not bn.training and not grad_enabled() and backend.is_host(x) and amp.autocast_dtype() is None
            and x.dtype == conv.weight.data.dtype and not _mode.layer_by_layer)


def conv_bn(conv: Conv2d, bn: _BatchNorm, x: Array, residual: Array | None = None) -> Array:
    """``bn(conv(x))``, or ``bn(conv(x), residual)`` for a batch norm that adds one: folded into one
    convolution where ``folds`` says so, else the two layers one after the other."""
    if not folds(conv, bn, x):
        y = conv(x)
        return bn(y) if residual is None else bn(y, residual)
    scale, shift = bn.eval_affine()
    return bn.finish_folded(conv.forward_affine(x, scale, shift), residual)
