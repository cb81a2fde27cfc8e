"""Softmax cross-entropy with optional label smoothing, computed with log-sum-exp."""
from __future__ import annotations

from ..backend import Array, get_array_module
from .module import Module, grad_enabled

REDUCTIONS = ("mean", "sum")


class SoftmaxCrossEntropy(Module):
    """``loss = criterion(logits, targets)`` gives the loss (a float); ``criterion.backward()`` dlogits.

    Like PyTorch's CrossEntropyLoss with ``label_smoothing`` and ``reduction``: the target distribution is
    (1 - eps) on the label plus eps/K everywhere, and the loss is the mean over the batch or (``"sum"``, as
    fast CIFAR recipes use with a learning rate scaled to match) the sum. The gradient is computed and kept only
    when gradients are enabled. Float16 logits (mixed precision) are upcast: the loss and its gradient are
    float32.
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def extra_repr(self) -> str:
        parts = [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        return ", ".join(parts + ([f"reduction='{self.reduction}'"] if self.reduction != "mean" else []))

    def __call__(self, logits: Array, targets: Array) -> float:  # type: ignore[override]
        return self.forward(logits, targets)

    def forward(self, logits: Array, targets: Array) -> float:  # type: ignore[override]
        return float(self.loss_array(logits, targets))

    def loss_array(self, logits: Array, targets: Array) -> Array:
        """The loss as a 0-d array on the logits' device (``forward`` without the host read), keeping the
        gradient for ``backward`` as ``forward`` does."""
        xp = get_array_module(logits)
        if logits.ndim != 2 or targets.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy expects logits (N, K) and targets (N,), got "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        n, k = logits.shape
        if logits.dtype.itemsize < 4:
            logits = logits.astype(xp.float32)
        z = logits - logits.max(axis=1, keepdims=True)
        ez = xp.exp(z)
        s = ez.sum(axis=1, keepdims=True)
        logp = z - xp.log(s)
        rows = xp.arange(n)
        eps = self.label_smoothing
        nll = -logp[rows, targets]
        loss = (1 - eps) * nll - eps * logp.mean(axis=1) if eps else nll
        if grad_enabled():
            grad = ez / s                                       # softmax
            grad[rows, targets] -= 1 - eps
            if eps:
                grad -= eps / k
            if self.reduction == "mean":
                grad *= 1.0 / n
            self.save_for_backward(grad)
        else:
            self.save_for_backward()
        return loss.mean() if self.reduction == "mean" else loss.sum()

    def backward(self) -> Array:  # type: ignore[override]
        grad, = self.saved()
        return grad
