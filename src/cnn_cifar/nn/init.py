"""Weight initialisation, drawn on the host from an explicit NumPy generator so a seed fixes the weights."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend

DEFAULT_DTYPE = np.float32


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def kaiming_normal(shape: tuple[int, ...], fan: int, rng: np.random.Generator | None = None,
                   dtype: Any = DEFAULT_DTYPE) -> Any:
    """He et al. (2015) normal init for ReLU nets: std = sqrt(2 / fan)."""
    w = _rng(rng).standard_normal(shape) * math.sqrt(2.0 / fan)
    return backend.to_device(w.astype(dtype))


def uniform_bias(n: int, fan_in: int, rng: np.random.Generator | None = None, dtype: Any = DEFAULT_DTYPE) -> Any:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return backend.to_device(_rng(rng).uniform(-bound, bound, n).astype(dtype))


def zeros(shape: tuple[int, ...], dtype: Any = DEFAULT_DTYPE) -> Any:
    return backend.xp.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], dtype: Any = DEFAULT_DTYPE) -> Any:
    return backend.xp.ones(shape, dtype=dtype)
