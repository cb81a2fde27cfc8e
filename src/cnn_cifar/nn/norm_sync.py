"""The synchronised path of batch norm (``convert_sync_batchnorm``: training with a process group of several
ranks, host or device arrays): the mean and variance of the whole global batch, and the input gradient from
the global sums, each through all-reduces of per-channel sums. The layers and the dispatch are in norm.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import runtime
from ..backend import Array, get_array_module
from .module import Module
from .norm_host import finish, track_running_stats, ungate


@dataclass(frozen=True)
class Saved:
    """What the synchronised forward keeps for backward."""
    xhat: Array                 # the normalised input (C, M)
    invstd: Array               # 1/sqrt(var + eps) per channel (C,), of the global batch
    group: Any                  # the process group (a distributed Communicator) the statistics came from
    count: Array                # the global count of values per channel (a 0-d array: no device sync)
    gate: Array | None          # a fused ReLU's output (the gradient passes where it is positive), or None


def forward(bn: Module, x2: Array, res2: Array | None, relu: bool) -> tuple[Array, Saved]:
    """Training with the global batch's statistics: one all-reduce of the channel sums and the count, one of
    the centred squares (the same two passes as one process)."""
    group = bn.process_group
    xp = get_array_module(x2)
    c, m = x2.shape
    sums = xp.empty(c + 1, dtype=x2.dtype)
    x2.sum(axis=1, out=sums[:c])
    sums[c] = m
    group.allreduce_sum(sums)
    count = sums[c]                                    # M, the global count (a device scalar: no sync)
    xhat = x2 - (sums[:c] / count)[:, None]
    sq = xp.einsum("cm,cm->c", xhat, xhat)
    group.allreduce_sum(sq)
    var = sq / count
    invstd = 1.0 / xp.sqrt(var + bn.eps)
    xhat *= invstd[:, None]
    y = xhat * bn.weight.data[:, None]
    y += bn.bias.data[:, None]
    track_running_stats(bn, sums[:c] / count, var, count)
    runtime.by_channel(lambda c0, c1: finish(y, res2, relu, c0, c1), y)
    return y, Saved(xhat, invstd, group, count, y if relu else None)


def backward(bn: Module, dy2: Array, saved: Saved, gate: Array | None, add: bool) -> tuple[Array, Array | None]:
    """(dx, the residual's gradient where ``add``, else None): dx from the global sums of dy and dy*xhat (one
    all-reduce); the weight and bias gradients stay this rank's own, as the gradient all-reduce that follows
    averages them. The fused ReLU (``gate``) is undone first."""
    if gate is not None:
        dy2 = ungate(dy2, gate)
    xp = get_array_module(dy2)
    xhat, count = saved.xhat, saved.count
    scale = bn.weight.data * saved.invstd
    c = dy2.shape[0]
    sums = xp.empty(2 * c, dtype=dy2.dtype)
    dy2.sum(axis=1, out=sums[:c])
    sums[c:] = xp.einsum("cm,cm->c", dy2, xhat)
    bn.weight.grad += sums[c:]
    bn.bias.grad += sums[:c]
    saved.group.allreduce_sum(sums)
    sums /= count
    dx = dy2 - sums[:c, None]
    dx -= xhat * sums[c:, None]
    dx *= scale[:, None]
    return dx, (dy2 if add else None)
