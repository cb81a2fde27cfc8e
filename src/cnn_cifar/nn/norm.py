"""Batch normalisation (PyTorch semantics: batch statistics in training, running ones in eval)."""
from __future__ import annotations

from .. import backend, runtime
from ..backend import Array, get_array_module
from . import amp, init, kernels
from .layout import check_4d, nchw, rows
from .module import Module, Parameter, grad_enabled


class _BatchNorm(Module):
    """Shared core: normalises a (C, M) matrix of channels by columns.

    Under mixed precision a float16 input is widened to the parameters' float32 for the statistics and the
    normalisation, and the output narrowed back to float16 (as PyTorch's autocast runs batch norm); backward
    does the same with the gradient.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: type = init.DEFAULT_DTYPE):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__} needs num_features > 0, got {num_features}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(init.ones((num_features,), dtype))
        self.bias = Parameter(init.zeros((num_features,), dtype))
        self.register_buffer("running_mean", init.zeros((num_features,), dtype))
        self.register_buffer("running_var", init.ones((num_features,), dtype))
        self.register_buffer("num_batches_tracked", backend.xp.zeros((), dtype="int64"))
        self.process_group = None      # a Communicator: batch statistics over all ranks (SyncBatchNorm)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _widen(self, x: Array) -> Array:
        """``x`` in the parameters' dtype where it is narrower (float16 under autocast)."""
        wide = self.weight.data.dtype
        return x if x.dtype.itemsize >= wide.itemsize else x.astype(wide)

    def _forward_rows(self, x2: Array) -> Array:
        """x2: (C, M) -> normalised (C, M); channel chunks run in parallel for large host arrays."""
        xp = get_array_module(x2)
        c, m = x2.shape
        weight, bias = self.weight.data, self.bias.data
        y = xp.empty((c, m), dtype=x2.dtype)
        keep = grad_enabled()
        if not self.training and not keep and not runtime.is_host(x2):        # GPU inference: one pass
            return kernels.bn_eval(x2, self.running_mean[:, None], self.running_var[:, None], weight[:, None],
                                   bias[:, None], self.eps)
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
            runtime.by_channel(apply_eval, x2)
            self.save_for_backward(xhat, invstd, False)
            return y
        group = self.process_group
        if group is not None and group.size > 1:
            return self._forward_synced(x2, group)
        if m < 2:
            raise ValueError(f"{self.label}: training needs more than one value per channel, "
                             f"got input rows of shape {tuple(x2.shape)}")
        if not runtime.is_host(x2):
            return self._forward_device(x2)
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
        runtime.by_channel(apply_train, x2)
        self._track(mean, var, m)
        self.save_for_backward(xhat, invstd, True)
        return y

    def _forward_device(self, x2: Array) -> Array:
        """The training forward on a GPU in five launches (mean, squared deviations, variance and invstd,
        normalise-and-scale, running statistics) instead of a dozen: see kernels.py."""
        c, m = x2.shape
        mean = x2.mean(axis=1, keepdims=True)                                        # (C, 1)
        var, invstd = kernels.bn_invstd(kernels.bn_sqdev_sum(x2, mean, axis=1, keepdims=True), 1.0 / m, self.eps)
        xhat, y = kernels.bn_forward(x2, mean, invstd, self.weight.data[:, None], self.bias.data[:, None])
        kernels.bn_track(mean[:, 0], var[:, 0], self.momentum, m / (m - 1), self.running_mean, self.running_var)
        self.num_batches_tracked += 1
        self.save_for_backward(xhat, invstd[:, 0], True)
        return y

    def _track(self, mean: Array, var: Array, count) -> None:
        """Move the running statistics towards this batch's (the variance unbiased over ``count`` values)."""
        mom = self.momentum
        self.running_mean = (1 - mom) * self.running_mean + mom * mean
        self.running_var = (1 - mom) * self.running_var + mom * var * (count / (count - 1))
        self.num_batches_tracked = self.num_batches_tracked + 1

    def _forward_synced(self, x2: Array, group) -> Array:
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
        self.save_for_backward(xhat, invstd, (group, count))
        return y

    def _backward_rows(self, dy2: Array, saved: tuple) -> Array:
        xhat, invstd, training = saved
        xp = get_array_module(dy2)
        c, m = dy2.shape
        scale = self.weight.data * invstd
        if isinstance(training, tuple):                  # synchronised statistics: (group, global count)
            return self._backward_synced(dy2, xhat, scale, *training)
        if training and not runtime.is_host(dy2):                    # GPU: two reductions and one fused pass
            dbeta = dy2.sum(axis=1, keepdims=True)
            dgamma = kernels.bn_dot_sum(dy2, xhat, axis=1, keepdims=True)
            dx = kernels.bn_backward(dy2, xhat, scale[:, None], dbeta, dgamma, 1.0 / m)
            self.weight.grad += dgamma[:, 0]
            self.bias.grad += dbeta[:, 0]
            return dx
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
        return dx

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

    def forward(self, x: Array) -> Array:
        check_4d(self, x, self.num_features)
        n, c, h, w = x.shape
        y = self._forward_rows(rows(self._widen(x)))
        return amp.like(nchw(y.reshape(c, h, w, n)), x)

    def backward(self, dy: Array) -> Array:
        saved = self.saved()
        n, c, h, w = dy.shape
        dx = self._backward_rows(rows(self._widen(dy)), saved)
        return amp.like(nchw(dx.reshape(c, h, w, n)), dy)


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of (N, C) over N."""

    def forward(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.label} expects input (N, {self.num_features}), got shape {tuple(x.shape)}")
        return amp.like(self._forward_rows(self._widen(x).T).T, x)

    def backward(self, dy: Array) -> Array:
        return amp.like(self._backward_rows(self._widen(dy).T, self.saved()).T, dy)
