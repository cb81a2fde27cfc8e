"""The device path of batch norm (CuPy arrays) in fused kernels (kernels.py) over a (C, M) matrix of channels:
training is one reduction (mean, variance, running statistics, batch count) and one element-wise pass
(normalise, scale, add the residual, apply the ReLU) each way; inference without autograd is one pass. The
layers and the dispatch are in norm.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import runtime
from ..backend import Array, get_array_module
from . import kernels
from .module import Module


@dataclass(frozen=True)
class Saved:
    """What the device training forward keeps for backward."""
    xhat: Array                 # the normalised input (C, M)
    var: Array                  # the batch variance (C, 1) (the kernels take rsqrt(var + eps) themselves)
    gate: Array | None          # a fused ReLU's output (the gradient passes where it is positive), or None


def _epilogue(res2: Array | None, relu: bool) -> str:
    """The fused kernels' suffix (kernels.BN_FORWARD / BN_EVAL): a residual added, a ReLU applied."""
    return ("_add" if res2 is not None else "") + ("_relu" if relu else "")


def infer(bn: Module, x2: Array, res2: Array | None, relu: bool) -> Array:
    """Eval without autograd: normalise with the running statistics in one kernel; nothing to keep."""
    res = () if res2 is None else (res2,)
    return kernels.BN_EVAL[_epilogue(res2, relu)](x2, bn.running_mean[:, None], bn.running_var[:, None], bn.eps,
                                                  bn.weight.data[:, None], bn.bias.data[:, None], *res)


def forward(bn: Module, x2: Array, res2: Array | None, relu: bool) -> tuple[Array, Saved]:
    """Training: the batch's statistics and the running ones in one reduction, the output in one pass."""
    c, m = x2.shape
    stats = get_array_module(x2).empty((2, c), dtype=x2.dtype)                 # the batch's mean and variance
    kernels.bn_stats(x2, bn.momentum, stats[0], stats[1], bn.running_mean, bn.running_var, bn.num_batches_tracked,
                     axis=1)
    mean, var = stats[0][:, None], stats[1][:, None]                            # (C, 1)
    res = () if res2 is None else (res2,)
    xhat, y = kernels.BN_FORWARD[_epilogue(res2, relu)](
        x2, mean, var, bn.eps, bn.weight.data[:, None], bn.bias.data[:, None], *res)
    return y, Saved(xhat, var, y if relu else None)


def backward(bn: Module, dy2: Array, saved: Saved, gate: Array | None, add: bool) -> tuple[Array, Array | None]:
    """(dx, the residual's gradient where ``add``, else None): one reduction (both gradient sums, added into the
    parameters' gradients) and one element-wise pass (dx), the fused ReLU undone inside them; with a residual
    the gated gradient, which the residual receives too, is one more pass first."""
    xp = get_array_module(dy2)
    c, m = dy2.shape
    dres = None
    if add:                                     # the gated gradient is the residual's too: one more pass
        dy2 = dres = kernels.relu_backward(dy2, gate) if gate is not None else dy2
        gate = None
    g = 1.0 if gate is None else gate
    with runtime.workspace(xp, "bn_sums", (2, c), dy2.dtype) as sums:       # sum(g), sum(g * xhat)
        kernels.bn_grad_sums(dy2, g, saved.xhat, sums[0], sums[1], bn.weight.grad, bn.bias.grad, axis=1)
        dx = kernels.bn_backward(dy2, g, saved.xhat, bn.weight.data[:, None], saved.var, bn.eps, sums[0][:, None],
                                 sums[1][:, None], 1.0 / m)
    return dx, dres
