"""Central finite-difference gradient checks in float64 (shared by the layer and model tests)."""
from __future__ import annotations

import numpy as np

from cnn_cifar import backend, nn
from cnn_cifar.nn import random as nnrandom

H = 1e-6
TOL = 1e-6


ATOL = 1e-7


def rel_error(a, b) -> float:
    """||a - b|| / (||a|| + ||b||); a gradient that is zero in exact arithmetic (conv bias before training BN) gives 0
    when both estimates are below ATOL in norm, since its relative error is pure noise."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.linalg.norm(a) < ATOL and np.linalg.norm(b) < ATOL:
        return 0.0
    denom = max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)
    return float(np.linalg.norm(a - b) / denom)


def _pick(size: int, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_points is None or size <= max_points:
        return np.arange(size)
    return rng.choice(size, max_points, replace=False)


def numeric_grad(f, arr, max_points: int | None = None, seed: int = 0):
    """Central differences of scalar f() w.r.t. (a subset of) the entries of arr, changed in place."""
    rng = np.random.default_rng(seed)
    flat = arr.reshape(-1)
    assert arr.flags.c_contiguous, "numeric_grad needs a C-contiguous array (it edits it in place)"
    idx = _pick(flat.size, max_points, rng)
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = float(flat[int(i)])
        flat[int(i)] = old + H
        fp = f()
        flat[int(i)] = old - H
        fm = f()
        flat[int(i)] = old
        out[k] = (fp - fm) / (2 * H)
    return idx, out


def check_module(module, x, max_points: int | None = None, seed: int = 0, tol: float = TOL,
                 skip: tuple[str, ...] = ()) -> dict:
    """Check dx and every parameter gradient of module at x against finite differences.

    ``skip`` names parameters left out: ones whose true gradient is nearly zero by construction (a batch
    norm's scale whose output reaches the loss only through scale-invariant layers and another batch norm,
    where it matters only through that norm's eps), so that finite differences measure rounding noise.

    The scalar is sum(module(x) * G) for a fixed random G. Dropout masks are fixed by reseeding the
    training-time stream before every forward. Returns the relative errors by name.
    """
    rng = np.random.default_rng(seed + 1)
    # Only a module with dropout draws random numbers; reseeding the stream (a new generator, slow to set up
    # on a large GPU) before every forward is needed only then.
    random = any(isinstance(m, nn.Dropout) for m in module.modules())

    def reseed() -> None:
        if random:
            nnrandom.manual_seed(123)
    reseed()
    y = module.forward(x)
    g = backend.to_device(rng.standard_normal(y.shape))

    def f() -> float:
        reseed()
        return float((module.forward(x) * g).sum())

    for p in module.parameters():
        p.grad[...] = 0
    reseed()
    module.forward(x)
    dx = backend.to_numpy(module.backward(g)).reshape(-1)
    grads = {name: backend.to_numpy(p.grad).reshape(-1).copy() for name, p in module.named_parameters()}
    errors = {}
    idx, num = numeric_grad(f, x, max_points, seed)
    errors["x"] = rel_error(dx[idx], num)
    for name, p in module.named_parameters():
        if name in skip:
            continue
        idx, num = numeric_grad(f, p.data, max_points, seed)
        errors[name] = rel_error(grads[name][idx], num)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"{type(module).__name__}: relative errors above {tol}: {bad}"
    return errors
