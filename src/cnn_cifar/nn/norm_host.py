"""The host path of batch norm (NumPy arrays; also eval with autograd on a GPU): per-channel passes over a (C, M)
matrix of channels, each chunk of channels normalised, scaled and finished (residual, ReLU) while it is in
cache, chunks in parallel for large arrays (``runtime.by_channel``).

Two forwards, with the batch's statistics (training) or the running ones (eval), share one backward. The
synchronised path (norm_sync.py) shares ``finish``, ``ungate`` and ``track_running_stats``. The layers and
the dispatch are in norm.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import runtime
from ..backend import Array, get_array_module
from .module import Module, grad_enabled


@dataclass(frozen=True)
class Saved:
    """What a host forward keeps for backward."""
    centered: Array | None      # x less the mean that normalised it (C, M), so xhat = centered * invstd; None
                                # from an eval forward under no_grad
    invstd: Array               # 1/sqrt(var + eps) per channel (C,), of the statistics that normalised
    batch: bool                 # the batch's statistics (training; they depend on x) or the running ones
    gate: Array | None          # a fused ReLU's output (the gradient passes where it is positive), or None


def finish(y: Array, res2: Array | None, relu: bool, c0: int, c1: int) -> None:
    """Add the residual to rows c0:c1 of y and apply the fused ReLU, in place, while the rows are still in
    cache (NaN passes, as in the kernels)."""
    if res2 is not None:
        y[c0:c1] += res2[c0:c1]
    if relu:
        runtime.relu(y[c0:c1], out=y[c0:c1])


def track_running_stats(bn: Module, mean: Array, var: Array, count) -> None:
    """Move the layer's running statistics towards this batch's (the variance unbiased over ``count`` values)
    and count the batch."""
    mom = bn.momentum
    bn.running_mean = (1 - mom) * bn.running_mean + mom * mean
    bn.running_var = (1 - mom) * bn.running_var + mom * var * (count / (count - 1))
    bn.num_batches_tracked = bn.num_batches_tracked + 1


def running_affine(bn: Module) -> tuple[Array, Array, Array]:
    """(invstd, scale, shift) of the running statistics: eval's batch norm is x * scale + shift per channel."""
    xp = get_array_module(bn.running_var)
    invstd = 1.0 / xp.sqrt(bn.running_var + bn.eps)
    scale = bn.weight.data * invstd
    return invstd, scale, bn.bias.data - bn.running_mean * scale


def forward_running(bn: Module, x2: Array, res2: Array | None, relu: bool) -> tuple[Array, Saved]:
    """Eval: normalise with the running statistics as one per-channel multiply-add; with autograd on, the
    centred input is kept too."""
    xp = get_array_module(x2)
    c, m = x2.shape
    y = xp.empty((c, m), dtype=x2.dtype)
    invstd, scale, shift = running_affine(bn)
    centered = xp.empty((c, m), dtype=x2.dtype) if grad_enabled() else None

    def apply_eval(c0: int, c1: int) -> None:
        xp.multiply(x2[c0:c1], scale[c0:c1, None], out=y[c0:c1])
        y[c0:c1] += shift[c0:c1, None]
        if centered is not None:
            xp.subtract(x2[c0:c1], bn.running_mean[c0:c1, None], out=centered[c0:c1])
        finish(y, res2, relu, c0, c1)
    runtime.by_channel(apply_eval, x2)
    return y, Saved(centered, invstd, False, y if relu else None)


def forward_batch(bn: Module, x2: Array, res2: Array | None, relu: bool) -> tuple[Array, Saved]:
    """Training: each chunk of channels takes its mean, centres (kept for backward), takes its variance, and
    scales the centred values by weight * invstd and shifts them by bias (never normalising them in a pass
    of its own); then the running statistics move."""
    xp = get_array_module(x2)
    c, m = x2.shape
    weight, bias = bn.weight.data, bn.bias.data
    y = xp.empty((c, m), dtype=x2.dtype)
    centered = xp.empty((c, m), dtype=x2.dtype)
    mean = xp.empty(c, dtype=x2.dtype)
    var = xp.empty(c, dtype=x2.dtype)
    invstd = xp.empty(c, dtype=x2.dtype)

    def apply_train(c0: int, c1: int) -> None:
        xs, xc = x2[c0:c1], centered[c0:c1]
        mean[c0:c1] = runtime.row_sums(xs) / m
        xp.subtract(xs, mean[c0:c1, None], out=xc)
        var[c0:c1] = runtime.row_dots(xc, xc) / m
        invstd[c0:c1] = 1.0 / xp.sqrt(var[c0:c1] + bn.eps)
        xp.multiply(xc, (weight[c0:c1] * invstd[c0:c1])[:, None], out=y[c0:c1])
        y[c0:c1] += bias[c0:c1, None]
        finish(y, res2, relu, c0, c1)
    runtime.by_channel(apply_train, x2)
    track_running_stats(bn, mean, var, m)
    return y, Saved(centered, invstd, True, y if relu else None)


def _ungate_rows(dy: Array, gate: Array, out: Array) -> None:
    """out = dy where gate > 0, else 0 (+0.0, even for inf or NaN in dy), for rows of the same shape. Done on the
    bits: dy's bits times a 0/1 mask, which gives the same bits as a masked copy without its data-dependent
    branches (several times faster)."""
    xp = get_array_module(dy)
    bits = xp.dtype(f"int{8 * dy.dtype.itemsize}")
    xp.multiply(dy.view(bits), xp.greater(gate, 0), out=out.view(bits))


def ungate(dy2: Array, gate: Array) -> Array:
    """dy through the fused ReLU whose output is ``gate``, as a new array (``_ungate_rows``)."""
    xp = get_array_module(dy2)
    d = xp.empty(dy2.shape, dtype=dy2.dtype)
    runtime.by_channel(lambda c0, c1: _ungate_rows(dy2[c0:c1], gate[c0:c1], d[c0:c1]), dy2)
    return d


def backward(bn: Module, dy2: Array, saved: Saved, gate: Array | None, add: bool) -> tuple[Array, Array | None]:
    """(dx, the residual's gradient where ``add``, else None) in rows, the parameters' gradients added; the
    fused ReLU (``gate``) undone first (into dx's own buffer when nothing else needs the ungated gradient; then
    one temporary of a chunk's size; otherwise none)."""
    xp = get_array_module(dy2)
    c, m = dy2.shape
    centered, invstd, batch = saved.centered, saved.invstd, saved.batch
    scale = bn.weight.data * invstd
    dx = xp.empty((c, m), dtype=dy2.dtype)
    dres = xp.empty((c, m), dtype=dy2.dtype) if gate is not None and add else None
    dbeta = xp.empty(c, dtype=dy2.dtype)
    dgamma = xp.empty(c, dtype=dy2.dtype)

    def apply(c0: int, c1: int) -> None:
        d, dxs, xc, sc = dy2[c0:c1], dx[c0:c1], centered[c0:c1], scale[c0:c1, None]
        if gate is not None:                      # d: the gradient through the ReLU
            d = dres[c0:c1] if dres is not None else dxs
            _ungate_rows(dy2[c0:c1], gate[c0:c1], d)
        dbeta[c0:c1] = runtime.row_sums(d)
        dgamma[c0:c1] = runtime.row_dots(d, xc) * invstd[c0:c1]
        if batch:
            # dx = gamma*invstd * (dy - sum(dy)/M - xhat*sum(dy*xhat)/M), xhat = centered * invstd
            k1 = (dgamma[c0:c1] * invstd[c0:c1] / m)[:, None]
            if d is dxs:                          # ungated into dx's own buffer: the product apart
                dxs -= xp.multiply(xc, k1)
            else:
                xp.multiply(xc, k1, out=dxs)
                xp.subtract(d, dxs, out=dxs)
            dxs -= (dbeta[c0:c1] / m)[:, None]
            dxs *= sc
        else:
            xp.multiply(d, sc, out=dxs)
    runtime.by_channel(apply, dy2)
    bn.weight.grad += dgamma
    bn.bias.grad += dbeta
    return dx, (None if not add else dres if dres is not None else dy2)
