"""The optimizers' fused GPU updates: one launch per flat parameter buffer and step, each beside its NumPy
reference (declared as ``cnn_cifar.fused_kernel`` describes). The reference is the update's one written
formula; the host paths in optimizers.py compute the same with in-place NumPy operations, and
tests/test_optim.py checks the two agree."""
from __future__ import annotations

import numpy as np

from ..fused_kernel import elementwise


def _sgd_reference(g, lr, mu, wd, nesterov, ok, p, v):
    d = g + wd * p
    v_new = mu * v + d
    p_new = p - lr * (d + mu * v_new if nesterov else v_new)
    return np.where(ok, p_new, p), np.where(ok, v_new, v)


sgd_update = elementwise(
    "T g, T lr, T mu, T wd, bool nesterov, bool ok", "T p, T v",
    "if (ok) { T d = g + wd * p; v = mu * v + d; p -= lr * (nesterov ? d + mu * v : v); }", "cnn_sgd_update",
    _sgd_reference)
"""SGD with momentum (PyTorch's form; v starts at 0, so the first step's v is the gradient), L2 weight decay
added to the gradient, optional Nesterov; p and v in place. ``ok`` (a device bool) false leaves both as they
are: a step whose loss was not finite is skipped on the device, without a host read."""


def _adam_reference(g, step_size, b1, b2, corr2, eps, l2, shrink, ok, p, m, v):
    d = g + l2 * p
    m_new = b1 * m + (1 - b1) * d
    v_new = b2 * v + (1 - b2) * (d * d)
    p_new = p * shrink - step_size * (m_new / (np.sqrt(v_new / corr2) + eps))
    return np.where(ok, p_new, p), np.where(ok, m_new, m), np.where(ok, v_new, v)


adam_update = elementwise(
    "T g, T step_size, T b1, T b2, T corr2, T eps, T l2, T shrink, bool ok", "T p, T m, T v",
    """if (ok) {
        T d = g + l2 * p;
        m = b1 * m + (1 - b1) * d;
        v = b2 * v + (1 - b2) * (d * d);
        p = p * shrink - step_size * (m / (sqrt(v / corr2) + eps));
    }""", "cnn_adam_update", _adam_reference)
"""Adam's step with bias correction (step_size = lr / (1 - b1^t), corr2 = 1 - b2^t), L2 ``l2`` added to the
gradient (Adam) or the decoupled decay as ``shrink`` = 1 - lr * weight_decay (AdamW); p, m, v in place, or
left as they are where ``ok`` is false."""
