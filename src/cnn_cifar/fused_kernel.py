"""Fused GPU kernels (CuPy ``ElementwiseKernel`` and ``ReductionKernel``), each declared once with its CUDA C
body and, beside it, a NumPy reference computing the same outputs from the same inputs.

On a GPU every array operation is a kernel launch of Python and driver time, so a layer or an optimizer
written as ten NumPy-style passes costs more in launches than in arithmetic at CIFAR sizes; a fused kernel
does several passes in one launch. The CuPy stand-in the tests run on executes the reference (found by the
kernel's name in ``REFERENCES``), so every call site runs in CI; on real CuPy the CUDA body runs, and the
suite under real CuPy (benchmarks/gpu_check.py) checks the two agree. NumPy arrays never reach these
kernels: their callers keep their own host paths. The kernels live beside what uses them: the layers' in
``nn/kernels.py``, the optimizers' in ``optim/kernels.py``.

Declaring one: ``elementwise(in_params, out_params, operation, name, reference)`` or ``reduction(...)`` with
CuPy's argument conventions (``T`` is the dtype of the arrays, float32 in training and float64 in the
gradient checks); the reference takes the same inputs as NumPy arrays (and, for reductions, ``axis``) and
returns the outputs. Names start with ``cnn_`` and are unique. In the CUDA bodies ``i`` is the element index
and, as CuPy reserves them, no variable is named ``n``, ``i`` or ``_...`` (nor ``a``/``b`` in a reduction's
map expression), and constants of type ``T`` are written ``(T)(0.0f)`` (a float converts to CuPy's float16 as
to float and double; an int may not).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .backend import get_array_module

REFERENCES: dict[str, Callable[..., Any]] = {}


class Kernel:
    """A CuPy kernel built on first use (CUDA compiles it then), called like the CuPy kernel object."""

    def __init__(self, kind: str, args: tuple, name: str, reference: Callable[..., Any], **options: Any):
        if name in REFERENCES:
            raise ValueError(f"kernel {name!r} is already defined")
        self.kind, self.args, self.name, self.options = kind, args, name, options
        REFERENCES[name] = reference
        self._built: dict[int, Any] = {}

    def __call__(self, *arrays: Any, **kwargs: Any) -> Any:
        xp = get_array_module(*arrays)
        if xp is np:
            raise TypeError(f"kernel {self.name} runs on device arrays only")
        k = self._built.get(id(xp))
        if k is None:
            k = self._built[id(xp)] = getattr(xp, self.kind)(*self.args, name=self.name, **self.options)
        return k(*arrays, **kwargs)


def elementwise(in_params: str, out_params: str, operation: str, name: str,
                reference: Callable[..., Any]) -> Kernel:
    return Kernel("ElementwiseKernel", (in_params, out_params, operation), name, reference)


def reduction(in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str, identity: str,
              name: str, reference: Callable[..., Any], **options: Any) -> Kernel:
    """A ReductionKernel; ``options`` go to CuPy's constructor (``reduce_type``, ``preamble``). Outputs may be
    passed after the inputs (then all of them, written in place); the reference then gets their current
    values after the inputs, and ``axis``/``keepdims`` as keywords."""
    return Kernel("ReductionKernel", (in_params, out_params, map_expr, reduce_expr, post_map_expr, identity),
                  name, reference, **options)
