"""GELU on float32 NumPy arrays: the forward and the gradient factor backward needs, in one pass over memory.

The arithmetic is ``special``'s float32 erfc (Numerical Recipes' fit erfc(z) = t exp(P(t) - z^2),
t = 1/(1 + z/2), fractional error below 1.2e-7) at z = |x|/sqrt(2), which gives Phi(x) = 1 - erfc(z)/2 for
x >= 0 and erfc(z)/2 below (written Phi = erfc(z)/2 + [x >= 0] (1 - erfc(z)), exact in the lower tail), and
exp(-z^2) = sqrt(2 pi) phi(x) for the gradient factor Phi(x) + x phi(x). What makes it fast is where it
runs: some forty element-wise steps, each a NumPy ufunc with an ``out=`` buffer, over blocks of ``BLOCK``
elements that stay in the caches, the blocks split over the cores (``runtime.by_channel``; NumPy's ufuncs
release the GIL). Over a whole activation the same steps would each stream it through memory and allocate a
temporary of its size.
"""
from __future__ import annotations

import math

import numpy as np

from .. import runtime
from .special import _ERFC_FIT

BLOCK = 131072
"""Elements per block: small blocks lose to each ufunc call's fixed cost, paid holding the GIL (so the threads
queue for it), large ones to memory traffic; the Performance page has the measurements behind this value."""
_INV_SQRT_2 = np.float32(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))
_FIT = tuple(np.float32(c) for c in _ERFC_FIT)


def forward(x: np.ndarray, keep_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(gelu(x), Phi(x) + x phi(x) or None) for a float32 host array ``x``: the output and, with
    ``keep_grad``, the factor backward multiplies dy by."""
    # The outputs take x's memory order (an (N, C, H, W) activation here is a view of (C, H, W, N) memory) and
    # the pass walks all three in that order: no transposing copy on the way in or out.
    y = np.empty_like(x)
    g = np.empty_like(x) if keep_grad else None
    flat, y_flat = x.ravel(order="K"), y.ravel(order="K")
    g_flat = None if g is None else g.ravel(order="K")
    blocks = -(-flat.size // BLOCK)

    def run(b0: int, b1: int) -> None:
        z, t, p = (np.empty(BLOCK, np.float32) for _ in range(3))
        m = np.empty(BLOCK, bool)
        for s in range(b0 * BLOCK, min(b1 * BLOCK, flat.size), BLOCK):
            e = min(s + BLOCK, flat.size)
            _block(flat[s:e], y_flat[s:e], None if g_flat is None else g_flat[s:e], z[:e - s], t[:e - s], p[:e - s],
                   m[:e - s])

    runtime.by_channel(run, flat, channels=blocks)
    return y, g


def _block(x: np.ndarray, y: np.ndarray, g: np.ndarray | None, z: np.ndarray, t: np.ndarray,
           p: np.ndarray, m: np.ndarray) -> None:
    """One block: y = x Phi(x), and g = Phi(x) + x phi(x) where asked; z, t, p (float32) and m (bool) are
    scratch."""
    np.abs(x, out=z)
    z *= _INV_SQRT_2                                  # z = |x| / sqrt 2 >= 0
    np.multiply(z, np.float32(0.5), out=t)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)                           # t = 1 / (1 + z/2)
    np.multiply(t, _FIT[0], out=p)
    p += _FIT[1]
    for c in _FIT[2:]:
        p *= t
        p += c                                        # p = P(t)
    z *= z                                            # z = z^2 = x^2 / 2
    p -= z
    np.exp(p, out=p)
    p *= t                                            # p = erfc(|x| / sqrt 2)
    p *= np.float32(0.5)                              # p = erfc(z) / 2, Phi(x) for x < 0 (exact in the tail)
    np.multiply(p, np.float32(-2.0), out=t)
    t += np.float32(1.0)
    np.greater_equal(x, 0, out=m)
    t *= m
    p += t                                            # p = Phi(x): 1 - erfc(z)/2 for x >= 0
    np.multiply(x, p, out=y)
    if g is not None:
        np.negative(z, out=z)
        np.exp(z, out=z)
        z *= _INV_SQRT_2PI                            # z = phi(x)
        z *= x
        np.add(z, p, out=g)
