"""Softmax cross-entropy with optional label smoothing, computed with log-sum-exp."""
from __future__ import annotations

from typing import Any

from .. import backend


class SoftmaxCrossEntropy:
    """``loss = criterion(logits, targets)`` gives the mean loss; ``criterion.backward()`` dlogits."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self._grad: Any = None

    def __call__(self, logits: Any, targets: Any) -> float:
        return self.forward(logits, targets)

    def forward(self, logits: Any, targets: Any) -> float:
        xp = backend.get_array_module(logits)
        if logits.ndim != 2 or targets.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy expects logits (N, K) and targets (N,), got "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        n, k = logits.shape
        z = logits - logits.max(axis=1, keepdims=True)
        ez = xp.exp(z)
        s = ez.sum(axis=1, keepdims=True)
        logp = z - xp.log(s)
        rows = xp.arange(n)
        eps = self.label_smoothing
        nll = -logp[rows, targets]
        loss = (1 - eps) * nll - eps * logp.mean(axis=1) if eps else nll
        grad = ez / s                                       # softmax
        grad[rows, targets] -= 1 - eps
        if eps:
            grad -= eps / k
        grad *= 1.0 / n
        self._grad = grad
        return float(loss.mean())

    def backward(self) -> Any:
        return self._grad
