"""Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_."""
from __future__ import annotations

import math
from typing import Iterable

from ..nn import Parameter


def grad_norm(params: Iterable[Parameter]) -> float:
    """The L2 norm of all gradients taken together (one host sync on a GPU). Anything with a ``grad`` array
    counts as a parameter here, so an optimizer's flat buffers (``optimizer.buffers``) clip in one dot product
    and one scaling per buffer."""
    sq = None
    for p in params:
        g = p.grad.ravel()
        term = g.dot(g)
        sq = term if sq is None else sq + term
    return 0.0 if sq is None else math.sqrt(float(sq))


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float, eps: float = 1e-6) -> float:
    """Scale every gradient in place by min(1, max_norm / (total_norm + 1e-6)), where total_norm is the L2
    norm over all parameters' gradients together (PyTorch's formula); returns total_norm, measured before
    clipping. A non-finite norm is returned as it is and the gradients are left alone (the caller decides)."""
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be > 0, got {max_norm}")
    params = list(params)
    total = grad_norm(params)
    if math.isfinite(total):
        coef = max_norm / (total + eps)
        if coef < 1.0:
            for p in params:
                p.grad *= coef
    return total
