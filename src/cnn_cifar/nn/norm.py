"""Batch normalisation (PyTorch semantics: batch statistics in training, running ones in eval), with an
optional fused ReLU and residual sum: ``BatchNorm2d(c, relu=True)(x, residual)`` is relu(bn(x) + residual)
without a separate layer for either (on a GPU inside batch norm's own element-wise kernel), as
torch.ao.nn.intrinsic.BNReLU2d fuses the two."""
from __future__ import annotations

from typing import NamedTuple

from .. import backend, runtime
from ..backend import Array, get_array_module
from . import amp, init, kernels
from .layout import check_4d, nchw, rows
from .module import Module, Parameter, grad_enabled


class _Saved(NamedTuple):
    """What a training or autograd forward keeps for backward."""
    xhat: Array                 # the normalised input
    invstd: Array | None        # 1/sqrt(var + eps), host paths
    var: Array | None           # the batch variance, the GPU path (its kernels take rsqrt themselves)
    training: object            # True (batch statistics), False (running ones), or (group, count) when synced
    gate: Array | None          # the fused ReLU's output: the gradient passes where it is positive
    residual: bool              # whether a residual was added (backward then returns its gradient too)


class _BatchNorm(Module):
    """Shared core: normalises a (C, M) matrix of channels by columns.

    ``relu=True`` fuses a ReLU after the affine transform, and ``forward(x, residual)`` adds ``residual``
    before it (a ResNet block's relu(bn2(conv2(.)) + shortcut)): on a GPU, in batch norm's element-wise
    kernel each way instead of two more passes forward and one or two back. Backward then returns the gradient
    of the input, or of the input and the residual as a pair. The fused ReLU's output is kept as its gate
    for backward (as ``ReLU(inplace=True)`` keeps it): do not change it in place before backward.

    Under mixed precision a float16 input is widened to the parameters' float32 for the statistics and the
    normalisation, and the output narrowed back to float16 (as PyTorch's autocast runs batch norm); backward
    does the same with the gradient.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: type = init.DEFAULT_DTYPE, relu: bool = False):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__} needs num_features > 0, got {num_features}")
        self.num_features, self.eps, self.momentum, self.relu = num_features, eps, momentum, relu
        self.weight = Parameter(init.ones((num_features,), dtype))
        self.bias = Parameter(init.zeros((num_features,), dtype))
        self.register_buffer("running_mean", init.zeros((num_features,), dtype))
        self.register_buffer("running_var", init.ones((num_features,), dtype))
        self.register_buffer("num_batches_tracked", backend.xp.zeros((), dtype="int64"))
        self.process_group = None      # a Communicator: batch statistics over all ranks (SyncBatchNorm)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + (", relu=True" if self.relu else "")

    def reset_running_stats(self) -> None:
        """Running mean 0, variance 1, batch count 0, in place (as torch's ``reset_running_stats``)."""
        self.running_mean[...] = 0
        self.running_var[...] = 1
        self.num_batches_tracked = get_array_module(self.running_mean).zeros((), dtype="int64")

    def _epilogue(self, residual: bool) -> str:
        """The fused kernels' suffix (kernels.BN_FORWARD / BN_EVAL) for this layer and call."""
        return ("_add" if residual else "") + ("_relu" if self.relu else "")

    def _finish(self, y: Array, res2: Array | None, c0: int, c1: int) -> None:
        """Host paths: add the residual to rows c0:c1 of y and apply the fused ReLU, in place, while the rows
        are still in cache (NaN passes, as in the kernels)."""
        if res2 is not None:
            y[c0:c1] += res2[c0:c1]
        if self.relu:
            get_array_module(y).maximum(y[c0:c1], 0, out=y[c0:c1])

    def _keep_narrow_gate(self, out2: Array) -> None:
        """Under autocast, keep the fused ReLU's gate as the narrowed output the caller holds anyway (``out2``,
        in rows), not the wider copy: half the memory kept until backward."""
        saved = self._saved
        if self.relu and saved is not None and saved[0].gate is not None and saved[0].gate.dtype != out2.dtype:
            self.save_for_backward(saved[0]._replace(gate=out2))

    def _check_residual(self, x: Array, residual: Array | None) -> None:
        if residual is not None and tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"{self.label}: residual of shape {tuple(residual.shape)} does not match the input "
                             f"{tuple(x.shape)}")

    def _widen(self, x: Array) -> Array:
        """``x`` in the parameters' dtype where it is narrower (float16 under autocast)."""
        wide = self.weight.data.dtype
        return x if x.dtype.itemsize >= wide.itemsize else x.astype(wide)

    def _forward_rows(self, x2: Array, res2: Array | None = None) -> Array:
        """x2: (C, M) -> normalised (C, M) (plus res2, then the ReLU, where fused); channel chunks run in
        parallel for large host arrays."""
        xp = get_array_module(x2)
        c, m = x2.shape
        weight, bias = self.weight.data, self.bias.data
        keep = grad_enabled()
        res = () if res2 is None else (res2,)
        if not self.training and not keep and not runtime.is_host(x2):        # GPU inference: one pass
            return kernels.BN_EVAL[self._epilogue(res2 is not None)](
                x2, self.running_mean[:, None], self.running_var[:, None], self.eps, weight[:, None],
                bias[:, None], *res)
        if not self.training or runtime.is_host(x2):
            y = xp.empty((c, m), dtype=x2.dtype)
        if not self.training:
            invstd = 1.0 / xp.sqrt(self.running_var + self.eps)
            scale = weight * invstd
            shift = bias - self.running_mean * scale
            xhat = xp.empty((c, m), dtype=x2.dtype) if keep else None

            def apply_eval(c0: int, c1: int) -> None:
                xp.multiply(x2[c0:c1], scale[c0:c1, None], out=y[c0:c1])
                y[c0:c1] += shift[c0:c1, None]
                if xhat is not None:
                    xp.subtract(x2[c0:c1], self.running_mean[c0:c1, None], out=xhat[c0:c1])
                    xhat[c0:c1] *= invstd[c0:c1, None]
                self._finish(y, res2, c0, c1)
            runtime.by_channel(apply_eval, x2)
            self.save_for_backward(_Saved(xhat, invstd, None, False, y if self.relu else None, res2 is not None))
            return y
        group = self.process_group
        if group is not None and group.size > 1:
            return self._forward_synced(x2, res2, group)
        if m < 2:
            raise ValueError(f"{self.label}: training needs more than one value per channel, "
                             f"got input rows of shape {tuple(x2.shape)}")
        if not runtime.is_host(x2):
            return self._forward_device(x2, res2)
        xhat = xp.empty((c, m), dtype=x2.dtype)    # kept for backward; also the normalised values here
        mean = xp.empty(c, dtype=x2.dtype)
        var = xp.empty(c, dtype=x2.dtype)
        invstd = xp.empty(c, dtype=x2.dtype)

        def apply_train(c0: int, c1: int) -> None:
            xs, xh = x2[c0:c1], xhat[c0:c1]
            mean[c0:c1] = xs.mean(axis=1)
            xp.subtract(xs, mean[c0:c1, None], out=xh)
            var[c0:c1] = xp.einsum("cm,cm->c", xh, xh) / m
            invstd[c0:c1] = 1.0 / xp.sqrt(var[c0:c1] + self.eps)
            xh *= invstd[c0:c1, None]
            xp.multiply(xh, weight[c0:c1, None], out=y[c0:c1])
            y[c0:c1] += bias[c0:c1, None]
            self._finish(y, res2, c0, c1)
        runtime.by_channel(apply_train, x2)
        self._track(mean, var, m)
        self.save_for_backward(_Saved(xhat, invstd, None, True, y if self.relu else None, res2 is not None))
        return y

    def _forward_device(self, x2: Array, res2: Array | None) -> Array:
        """The training forward on a GPU in one reduction (mean, variance, running statistics, batch count)
        and one element-wise pass (normalise, scale, add the residual, apply the ReLU): see kernels.py."""
        c, m = x2.shape
        stats = get_array_module(x2).empty((2, c), dtype=x2.dtype)                 # the batch's mean and variance
        kernels.bn_stats(x2, self.momentum, stats[0], stats[1], self.running_mean, self.running_var,
                         self.num_batches_tracked, axis=1)
        mean, var = stats[0][:, None], stats[1][:, None]                            # (C, 1)
        res = () if res2 is None else (res2,)
        xhat, y = kernels.BN_FORWARD[self._epilogue(res2 is not None)](
            x2, mean, var, self.eps, self.weight.data[:, None], self.bias.data[:, None], *res)
        self.save_for_backward(_Saved(xhat, None, var, True, y if self.relu else None, res2 is not None))
        return y

    def _track(self, mean: Array, var: Array, count) -> None:
        """Move the running statistics towards this batch's (the variance unbiased over ``count`` values)."""
        mom = self.momentum
        self.running_mean = (1 - mom) * self.running_mean + mom * mean
        self.running_var = (1 - mom) * self.running_var + mom * var * (count / (count - 1))
        self.num_batches_tracked = self.num_batches_tracked + 1

    def _forward_synced(self, x2: Array, res2: Array | None, group) -> Array:
        """Training forward with the mean and variance of the whole global batch: one all-reduce of the
        channel sums and the count, one of the centred squares (the same two passes as one process)."""
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
        invstd = 1.0 / xp.sqrt(var + self.eps)
        xhat *= invstd[:, None]
        y = xhat * self.weight.data[:, None]
        y += self.bias.data[:, None]
        self._track(sums[:c] / count, var, count)
        runtime.by_channel(lambda c0, c1: self._finish(y, res2, c0, c1), y)
        self.save_for_backward(_Saved(xhat, invstd, None, (group, count), y if self.relu else None,
                                      res2 is not None))
        return y

    def _backward_rows(self, dy2: Array, saved: _Saved) -> tuple[Array, Array | None]:
        """(dx, d residual) in rows; the second is None when no residual was added."""
        xhat, invstd, var, training, gate, residual = saved
        xp = get_array_module(dy2)
        c, m = dy2.shape
        if gate is not None and gate.dtype != dy2.dtype:     # kept narrow under autocast (_keep_narrow_gate)
            gate = gate.astype(dy2.dtype)
        if training is True and not runtime.is_host(dy2):     # GPU: one reduction and one element-wise pass
            if residual:                            # the gated gradient is the residual's too: one more pass
                dy2 = dres = kernels.relu_backward(dy2, gate) if gate is not None else dy2
                gate = None
            g = 1.0 if gate is None else gate
            with runtime.workspace(xp, "bn_sums", (2, c), dy2.dtype) as sums:       # sum(g), sum(g * xhat)
                kernels.bn_grad_sums(dy2, g, xhat, sums[0], sums[1], self.weight.grad, self.bias.grad, axis=1)
                dx = kernels.bn_backward(dy2, g, xhat, self.weight.data[:, None], var, self.eps, sums[0][:, None],
                                         sums[1][:, None], 1.0 / m)
            return dx, (dres if residual else None)
        if gate is not None:                        # undo the fused ReLU first (0 where gated, even for inf/NaN)
            d = xp.zeros((c, m), dtype=dy2.dtype)
            runtime.by_channel(lambda c0, c1: xp.copyto(d[c0:c1], dy2[c0:c1], where=gate[c0:c1] > 0), dy2)
            dy2 = d
        dres = dy2 if residual else None
        scale = self.weight.data * invstd
        if isinstance(training, tuple):                  # synchronised statistics: (group, global count)
            return self._backward_synced(dy2, xhat, scale, *training), dres
        dx = xp.empty((c, m), dtype=dy2.dtype)
        dbeta = xp.empty(c, dtype=dy2.dtype)
        dgamma = xp.empty(c, dtype=dy2.dtype)

        def apply(c0: int, c1: int) -> None:
            d, xh, sc = dy2[c0:c1], xhat[c0:c1], scale[c0:c1, None]
            dbeta[c0:c1] = d.sum(axis=1)
            dgamma[c0:c1] = xp.einsum("cm,cm->c", d, xh)
            xp.multiply(d, sc, out=dx[c0:c1])
            if training:
                # dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat))
                dx[c0:c1] -= sc * (dbeta[c0:c1, None] / m)
                dx[c0:c1] -= xh * (sc * (dgamma[c0:c1, None] / m))
        runtime.by_channel(apply, dy2)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx, dres

    def _backward_synced(self, dy2: Array, xhat: Array, scale: Array, group, count: Array) -> Array:
        """dx from the global sums of dy and dy*xhat (one all-reduce); the weight and bias gradients stay
        this rank's own, as the gradient all-reduce that follows averages them."""
        xp = get_array_module(dy2)
        c = dy2.shape[0]
        sums = xp.empty(2 * c, dtype=dy2.dtype)
        dy2.sum(axis=1, out=sums[:c])
        sums[c:] = xp.einsum("cm,cm->c", dy2, xhat)
        self.weight.grad += sums[c:]
        self.bias.grad += sums[:c]
        group.allreduce_sum(sums)
        sums /= count
        dx = dy2 - sums[:c, None]
        dx -= xhat * sums[c:, None]
        dx *= scale[:, None]
        return dx


def convert_sync_batchnorm(model: Module, process_group) -> Module:
    """Make every batch norm of ``model`` normalise with the statistics of all ranks of ``process_group``
    (a Communicator) in training, as torch.nn.SyncBatchNorm.convert_sync_batchnorm; None undoes it."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.process_group = process_group
    return model


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of (N, C, H, W) over N, H and W."""

    def forward(self, x: Array, residual: Array | None = None) -> Array:
        check_4d(self, x, self.num_features)
        n, c, h, w = x.shape
        self._check_residual(x, residual)
        y = self._forward_rows(rows(self._widen(x)), None if residual is None else rows(self._widen(residual)))
        out = amp.like(nchw(y.reshape(c, h, w, n)), x)
        self._keep_narrow_gate(rows(out))
        return out

    def backward(self, dy: Array) -> Array | tuple[Array, Array]:
        saved, = self.saved()
        n, c, h, w = dy.shape
        dx, dres = self._backward_rows(rows(self._widen(dy)), saved)
        dx = amp.like(nchw(dx.reshape(c, h, w, n)), dy)
        return dx if dres is None else (dx, amp.like(nchw(dres.reshape(c, h, w, n)), dy))


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of (N, C) over N."""

    def forward(self, x: Array, residual: Array | None = None) -> Array:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.label} expects input (N, {self.num_features}), got shape {tuple(x.shape)}")
        self._check_residual(x, residual)
        res2 = None if residual is None else self._widen(residual).T
        out = amp.like(self._forward_rows(self._widen(x).T, res2).T, x)
        self._keep_narrow_gate(out.T)
        return out

    def backward(self, dy: Array) -> Array | tuple[Array, Array]:
        saved, = self.saved()
        dx, dres = self._backward_rows(self._widen(dy).T, saved)
        dx = amp.like(dx.T, dy)
        return dx if dres is None else (dx, amp.like(dres.T, dy))
