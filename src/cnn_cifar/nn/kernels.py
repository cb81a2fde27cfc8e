"""Fused GPU kernels (CuPy ``ElementwiseKernel`` and ``ReductionKernel``), each beside its NumPy reference.

On a GPU every array operation is a kernel launch of about 10 µs of Python and driver time, so a layer
written as ten NumPy-style passes costs more in launches than in arithmetic at CIFAR sizes. The kernels here
do several of those passes in one launch. Each is declared once with its CUDA C body and a NumPy function
that computes the same thing: the CuPy stand-in the tests run on executes the reference, so every call site
runs in CI; on real CuPy the CUDA body runs, and the suite under real CuPy (benchmarks/gpu_check.py) checks
the two agree. NumPy arrays never reach these kernels: the layers keep their own host paths.

Adding one: ``elementwise(in_params, out_params, operation, name, reference)`` or ``reduction(...)`` with
CuPy's argument conventions (``T`` is the dtype of the arrays, float32 in training and float64 in the
gradient checks); the reference takes the same inputs as NumPy arrays (and, for reductions, ``axis``) and
returns the outputs. Names start with ``cnn_`` and are unique: the stand-in finds references by name.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..backend import get_array_module

REFERENCES: dict[str, Callable[..., Any]] = {}


class Kernel:
    """A CuPy kernel built on first use (CUDA compiles it then), called like the CuPy kernel object."""

    def __init__(self, kind: str, args: tuple, name: str, reference: Callable[..., Any]):
        if name in REFERENCES:
            raise ValueError(f"kernel {name!r} is already defined")
        self.kind, self.args, self.name = kind, args, name
        REFERENCES[name] = reference
        self._built: dict[int, Any] = {}

    def __call__(self, *arrays: Any, **kwargs: Any) -> Any:
        xp = get_array_module(*arrays)
        if xp is np:
            raise TypeError(f"kernel {self.name} runs on device arrays only")
        k = self._built.get(id(xp))
        if k is None:
            k = self._built[id(xp)] = getattr(xp, self.kind)(*self.args, name=self.name)
        return k(*arrays, **kwargs)


def elementwise(in_params: str, out_params: str, operation: str, name: str,
                reference: Callable[..., Any]) -> Kernel:
    return Kernel("ElementwiseKernel", (in_params, out_params, operation), name, reference)


def reduction(in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str, identity: str,
              name: str, reference: Callable[..., Any]) -> Kernel:
    return Kernel("ReductionKernel", (in_params, out_params, map_expr, reduce_expr, post_map_expr, identity),
                  name, reference)


# ------------------------------------------------------------------------------------------ batch norm
# Rows are channels: x2 (C, M), per-channel values as (C, 1) columns.

bn_sqdev_sum = reduction(
    "T x, T mean", "T out", "(x - mean) * (x - mean)", "a + b", "out = a", "0", "cnn_bn_sqdev_sum",
    lambda x, mean, axis=None, keepdims=False: ((x - mean) ** 2).sum(axis=axis, keepdims=keepdims))
"""sum over M of (x - mean)^2: the variance's numerator, in one pass."""

bn_invstd = elementwise(
    "T sq, T inv_m, T eps", "T var, T invstd", "var = sq * inv_m; invstd = rsqrt(var + eps)", "cnn_bn_invstd",
    lambda sq, inv_m, eps: (sq * inv_m, 1.0 / np.sqrt(sq * inv_m + eps)))
"""The biased variance and 1/sqrt(var + eps) from the sum of squared deviations."""

bn_forward = elementwise(
    "T x, T mean, T invstd, T w, T b", "T xhat, T y", "xhat = (x - mean) * invstd; y = xhat * w + b",
    "cnn_bn_forward",
    lambda x, mean, invstd, w, b: ((x - mean) * invstd, (x - mean) * invstd * w + b))
"""Normalise and apply the affine transform: the normalised values (kept for backward) and the output."""

bn_track = elementwise(
    "T mean, T var, T mom, T unbias", "T rmean, T rvar",
    "rmean = (1 - mom) * rmean + mom * mean; rvar = (1 - mom) * rvar + mom * var * unbias", "cnn_bn_track",
    lambda mean, var, mom, unbias, rmean, rvar: ((1 - mom) * rmean + mom * mean,
                                                 (1 - mom) * rvar + mom * var * unbias))
"""The running statistics' momentum update, in place (rmean and rvar are passed as the outputs)."""

bn_dot_sum = reduction(
    "T dy, T xhat", "T out", "dy * xhat", "a + b", "out = a", "0", "cnn_bn_dot_sum",
    lambda dy, xhat, axis=None, keepdims=False: (dy * xhat).sum(axis=axis, keepdims=keepdims))
"""sum over M of dy * xhat: the weight's gradient, and a term of the input's."""

bn_backward = elementwise(
    "T dy, T xhat, T scale, T dbeta, T dgamma, T inv_m", "T dx",
    "dx = scale * (dy - (dbeta + xhat * dgamma) * inv_m)", "cnn_bn_backward",
    lambda dy, xhat, scale, dbeta, dgamma, inv_m: scale * (dy - (dbeta + xhat * dgamma) * inv_m))
"""dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)) in one pass."""

bn_eval = elementwise(
    "T x, T rmean, T rvar, T w, T b, T eps", "T y", "y = (x - rmean) * rsqrt(rvar + eps) * w + b", "cnn_bn_eval",
    lambda x, rmean, rvar, w, b, eps: (x - rmean) / np.sqrt(rvar + eps) * w + b)
"""Inference with the running statistics, in one pass."""
