"""Weight initialisation, drawn on the host from an explicit NumPy generator so a seed fixes the weights.

Layers start as PyTorch's do (``default_uniform``: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
i.e. kaiming_uniform with a=sqrt(5)); a model may re-initialise, as the CIFAR ResNets do their
convolutions with ``kaiming_normal`` (fan_out), like torchvision."""
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


def default_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator | None = None,
                    dtype: type = DEFAULT_DTYPE) -> Array:
    """PyTorch's default for Conv2d/Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return backend.to_device(_rng(rng).uniform(-bound, bound, shape).astype(dtype))


def zeros(shape: tuple[int, ...], dtype: type = DEFAULT_DTYPE) -> Array:
    return backend.xp.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], dtype: type = DEFAULT_DTYPE) -> Array:
    return backend.xp.ones(shape, dtype=dtype)
