"""Weight initialisation, drawn on the host from an explicit NumPy generator so a seed fixes the weights."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import Array

DEFAULT_DTYPE = np.float32


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def kaiming_normal(shape: tuple[int, ...], fan: int, rng: np.random.Generator | None = None,
                   dtype: type = DEFAULT_DTYPE) -> Array:
    """He et al. (2015) normal init for ReLU nets: std = sqrt(2 / fan)."""
    w = _rng(rng).standard_normal(shape) * math.sqrt(2.0 / fan)
    return backend.to_device(w.astype(dtype))


def zeros(shape: tuple[int, ...], dtype: type = DEFAULT_DTYPE) -> Array:
    return backend.xp.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], dtype: type = DEFAULT_DTYPE) -> Array:
    return backend.xp.ones(shape, dtype=dtype)
