"""Batch normalisation, as PyTorch's (batch statistics in training, running ones in eval), and the fused
batch norm + ReLU layers of a ResNet block.

- ``BatchNorm1d``, ``BatchNorm2d``: torch.nn's batch norms; backward returns dx.
- ``BatchNormReLU2d``: relu(bn(x)) in one layer (torch.ao.nn.intrinsic.BNReLU2d); backward returns dx.
- ``BatchNormAddReLU2d``: relu(bn(x) + residual), a ResNet block's second batch norm with the shortcut's
  sum and the block's ReLU; a layer of two inputs whose backward returns both gradients, ``(dx, dresidual)``.

The fused layers save the passes a separate ReLU and sum would make over memory (on a GPU, the launches: both
run inside batch norm's element-wise kernel each way). All four have the same parameters and buffers
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``: a fused layer loads a
BatchNorm2d's state dict, and PyTorch's) and are synchronised over ranks by ``convert_sync_batchnorm``.

They share ``_BatchNorm``, which normalises a (C, M) matrix of channels along one of three paths, each a
module with its forward and backward side by side: ``norm_host`` (NumPy arrays, and eval with autograd on a
GPU: the batch's or the running statistics in per-channel passes), ``norm_device`` (CuPy arrays: fused
kernels) and ``norm_sync`` (training with a process group of several ranks: the global batch's statistics).
A path's ``forward(bn, x2, res2, relu)`` (the host's ``forward_batch`` and ``forward_running``) returns the
output and a frozen ``Saved`` of its own fields; its ``backward(bn, dy2, saved, gate, add)`` returns dx and,
where ``add``, the residual's gradient. ``_BatchNorm._forward_rows`` picks the path, once, and saves it with
what it kept; backward runs that path's backward.
"""
from __future__ import annotations

from dataclasses import replace
from types import ModuleType
from typing import Any

from .. import backend, runtime
from ..backend import Array, get_array_module
from . import amp, init, norm_device, norm_host, norm_sync
from .layout import check_4d, nchw, rows
from .module import Module, Parameter, grad_enabled


class _BatchNorm(Module):
    """The shared core: parameters, buffers and the paths (module docstring) over a (C, M) matrix of channels.

    A subclass fixes the epilogue after the affine transform with two class constants: ``_ADD`` (a residual,
    given to forward, is added) and ``_RELU`` (a ReLU follows). The fused ReLU's output is kept as its gate
    for backward (as ``ReLU(inplace=True)`` keeps it): do not change it in place before backward.

    Under mixed precision a float16 input is widened to the parameters' float32 for the statistics and the
    normalisation, and the output narrowed back to float16 (as PyTorch's autocast runs batch norm); backward
    does the same with the gradient.
    """

    _ADD = False
    _RELU = False

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

    def reset_running_stats(self) -> None:
        """Running mean 0, variance 1, batch count 0, in place (as torch's ``reset_running_stats``)."""
        self.running_mean[...] = 0
        self.running_var[...] = 1
        self.num_batches_tracked = get_array_module(self.running_mean).zeros((), dtype="int64")

    def _keep_narrow_gate(self, out2: Array) -> None:
        """Under autocast, keep the fused ReLU's gate as the narrowed output the caller holds anyway (``out2``,
        in rows), not the wider copy: half the memory kept until backward."""
        if self._RELU and self.has_saved:
            path, saved = self._saved
            if saved.gate is not None and saved.gate.dtype != out2.dtype:
                self.save_for_backward(path, replace(saved, gate=out2))

    def _widen(self, x: Array) -> Array:
        """``x`` in the parameters' dtype where it is narrower (float16 under autocast)."""
        wide = self.weight.data.dtype
        return x if x.dtype.itemsize >= wide.itemsize else x.astype(wide)

    def _forward_rows(self, x2: Array, res2: Array | None = None) -> Array:
        """x2: (C, M) -> normalised (C, M) (plus res2, then the ReLU, where fused), by the path the mode, the
        array and the process group call for: the one dispatch. The path and what it keeps are saved."""
        if not self.training and not grad_enabled() and not backend.is_host(x2):
            return norm_device.infer(self, x2, res2, self._RELU)                 # one kernel, nothing kept
        if not self.training:
            path, forward = norm_host, norm_host.forward_running
        elif self.process_group is not None and self.process_group.size > 1:
            path, forward = norm_sync, norm_sync.forward
        elif x2.shape[1] < 2:
            raise ValueError(f"{self.label}: training needs more than one value per channel, "
                             f"got input rows of shape {tuple(x2.shape)}")
        elif backend.is_host(x2):
            path, forward = norm_host, norm_host.forward_batch
        else:
            path, forward = norm_device, norm_device.forward
        y, saved = forward(self, x2, res2, self._RELU)
        self.save_for_backward(path, saved)
        return y

    def _backward_rows(self, dy2: Array, path: ModuleType, saved: Any) -> tuple[Array, Array | None]:
        """(dx, d residual) in rows, by the path forward took (``path`` and its ``saved``, from ``self.saved()``);
        the second is None unless the layer adds one (``_ADD``): the gradient at the sum, dy through the ReLU."""
        gate = saved.gate
        if gate is not None and gate.dtype != dy2.dtype:     # kept narrow under autocast (_keep_narrow_gate)
            gate = gate.astype(dy2.dtype)
        return path.backward(self, dy2, saved, gate, self._ADD)

    # -- eval folded into the conv before it (nn.fold) ------------------------------------------------------
    def eval_affine(self) -> tuple[Array, Array]:
        """(scale, shift): this layer in eval is ``x * scale + shift`` per channel, before its residual and
        ReLU."""
        _, scale, shift = norm_host.running_affine(self)
        return scale, shift

    def finish_folded(self, y: Array, residual: Array | None = None) -> Array:
        """The rest of this layer after its affine was folded into the conv that made ``y`` (N, C, H, W; ours,
        changed in place): the residual added where the layer takes one, then the ReLU where it has one."""
        if self._ADD and (residual is None or tuple(residual.shape) != tuple(y.shape)):
            raise ValueError(f"{self.label}: needs a residual of the output's shape {tuple(y.shape)}, got "
                             f"{None if residual is None else tuple(residual.shape)}")
        if self._ADD or self._RELU:
            y2 = rows(y)
            res2 = rows(residual) if self._ADD else None
            runtime.by_channel(lambda c0, c1: norm_host.finish(y2, res2, self._RELU, c0, c1), y2)
        return y

    # -- (N, C, H, W) inputs --------------------------------------------------------------------------------
    def _forward_4d(self, x: Array, residual: Array | None = None) -> Array:
        check_4d(self, x, self.num_features)
        n, c, h, w = x.shape
        y = self._forward_rows(rows(self._widen(x)), None if residual is None else rows(self._widen(residual)))
        out = amp.like(nchw(y.reshape(c, h, w, n)), x)
        self._keep_narrow_gate(rows(out))
        return out

    def _backward_4d(self, dy: Array) -> tuple[Array, Array | None]:
        path, saved = self.saved()
        n, c, h, w = dy.shape
        dx, dres = self._backward_rows(rows(self._widen(dy)), path, saved)
        dx = amp.like(nchw(dx.reshape(c, h, w, n)), dy)
        return dx, None if dres is None else amp.like(nchw(dres.reshape(c, h, w, n)), dy)


def convert_sync_batchnorm(model: Module, process_group) -> Module:
    """Make every batch norm of ``model`` (the fused ones too) normalise with the statistics of all ranks of
    ``process_group`` (a Communicator) in training, as torch.nn.SyncBatchNorm.convert_sync_batchnorm; None
    undoes it."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.process_group = process_group
    return model


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of (N, C, H, W) over N, H and W (torch.nn.BatchNorm2d)."""

    def forward(self, x: Array) -> Array:
        return self._forward_4d(x)

    def backward(self, dy: Array) -> Array:
        return self._backward_4d(dy)[0]


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of (N, C) over N (torch.nn.BatchNorm1d)."""

    def forward(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.label} expects input (N, {self.num_features}), got shape {tuple(x.shape)}")
        return amp.like(self._forward_rows(self._widen(x).T).T, x)

    def backward(self, dy: Array) -> Array:
        path, saved = self.saved()
        dx, _ = self._backward_rows(self._widen(dy).T, path, saved)
        return amp.like(dx.T, dy)


class BatchNormReLU2d(_BatchNorm):
    """relu(BatchNorm2d(x)) in one layer, as torch.ao.nn.intrinsic.BNReLU2d: the ReLU applied to each chunk of
    channels while it is in cache (on a GPU inside batch norm's kernels), its output kept as the gate backward
    needs. Parameters, buffers and state-dict keys are BatchNorm2d's. ``backward(dy)`` returns dx."""

    _RELU = True

    def forward(self, x: Array) -> Array:
        return self._forward_4d(x)

    def backward(self, dy: Array) -> Array:
        return self._backward_4d(dy)[0]


class BatchNormAddReLU2d(_BatchNorm):
    """relu(BatchNorm2d(x) + residual) in one layer: a ResNet block's second batch norm, the shortcut's sum and
    the block's ReLU (``BasicBlock``), in the passes of BatchNormReLU2d. Parameters, buffers and state-dict
    keys are BatchNorm2d's; ``residual`` has the input's shape.

    A layer of two inputs: ``backward(dy)`` returns the pair ``(dx, dresidual)``, the gradients of ``x`` and of
    ``residual`` (the latter is dy through the ReLU, the gradient at the sum), both in dy's dtype. It does not
    go in a ``Sequential``; its caller routes the second gradient (``BasicBlock.backward``).
    """

    _ADD = True
    _RELU = True

    def forward(self, x: Array, residual: Array) -> Array:
        check_4d(self, x, self.num_features)
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"{self.label}: residual of shape {tuple(residual.shape)} does not match the input "
                             f"{tuple(x.shape)}")
        return self._forward_4d(x, residual)

    def backward(self, dy: Array) -> tuple[Array, Array]:
        dx, dres = self._backward_4d(dy)
        assert dres is not None                     # _ADD: _backward_rows returns the residual's gradient
        return dx, dres
