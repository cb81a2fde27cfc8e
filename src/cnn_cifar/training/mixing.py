"""The loss of a mixed batch (mixup, cutmix): cross-entropy over two label sets.

The batch's targets are ``MixedTargets(y_a, y_b, lam)`` (built by the loader); the loss is
lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b), and since both terms are functions of the same logits
its gradient is the same combination of the two cross-entropy gradients. Equivalent to PyTorch's
CrossEntropyLoss on the soft target lam * onehot(y_a) + (1 - lam) * onehot(y_b), label smoothing included,
without a soft-target loss in ``nn``.
"""
from __future__ import annotations

from ..backend import Array
from ..data.augment import MixedTargets
from ..nn import SoftmaxCrossEntropy, grad_enabled


def hard_labels(y: Array | MixedTargets) -> Array:
    """The labels train accuracy counts (``metrics.correct_hits``): for a mixed batch, the one with the larger
    share."""
    return y.dominant if isinstance(y, MixedTargets) else y


class MixedCrossEntropy:
    """``SoftmaxCrossEntropy``'s interface (``loss = crit(logits, targets)``, then ``crit.backward()``) for
    plain labels and for MixedTargets alike."""

    def __init__(self, base: SoftmaxCrossEntropy):
        self.base = base
        self._grad: Array | None = None

    @property
    def label_smoothing(self) -> float:
        return self.base.label_smoothing

    @property
    def reduction(self) -> str:
        return self.base.reduction

    def __call__(self, logits: Array, targets: Array | MixedTargets) -> float:
        return float(self.loss_array(logits, targets))

    def loss_array(self, logits: Array, targets: Array | MixedTargets) -> Array:
        """The loss as a 0-d array on the logits' device (no host read), keeping the gradient for backward."""
        if not isinstance(targets, MixedTargets):
            self._grad = None
            return self.base.loss_array(logits, targets)
        lam, keep = float(targets.lam), grad_enabled()
        loss_a = self.base.loss_array(logits, targets.y_a)
        grad = self.base.backward() * lam if keep else None
        loss_b = self.base.loss_array(logits, targets.y_b)
        if keep:
            grad += (1.0 - lam) * self.base.backward()
        self._grad = grad
        return lam * loss_a + (1.0 - lam) * loss_b

    def backward(self) -> Array:
        if self._grad is None:
            return self.base.backward()
        grad, self._grad = self._grad, None
        return grad
