"""Weight initialisation, drawn on the host from an explicit NumPy generator so a seed fixes the weights.

Layers start as PyTorch's do (``default_uniform``: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
i.e. kaiming_uniform with a=sqrt(5)); a model may re-initialise, as the CIFAR ResNets do their
convolutions with ``kaiming_normal`` (fan_out), like torchvision, or set a first convolution from the data
(``whitening``, the fast CIFAR recipes' frozen first layer)."""
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


def dirac(weight: Array) -> Array:
    """``weight`` (O, I, kh, kw) with its first min(O, I) filters set to the identity (1 at the kernel's centre
    of the matching input channel, 0 elsewhere), as ``torch.nn.init.dirac_`` on ``weight[:I]``: a
    convolution that starts by passing its input through, plus the other filters' random part."""
    out = weight.copy()
    o, i, kh, kw = out.shape
    n = min(o, i)
    out[:n] = 0
    idx = backend.get_array_module(out).arange(n)
    out[idx, idx, kh // 2, kw // 2] = 1
    return out


def whitening(images: np.ndarray, kernel: tuple[int, int] = (2, 2), eps: float = 5e-4) -> np.ndarray:
    """Weights (2 * C*kh*kw, C, kh, kw) of a convolution without padding that whitens the images' kh x kw
    patches: the eigenvectors of the patches' uncentred covariance, largest eigenvalue first, each divided by
    sqrt(eigenvalue + eps), then the same filters negated (so a ReLU-like activation after it keeps both
    signs), as the fast CIFAR-10 recipes initialise their frozen first layer. ``images`` are normalised
    (N, C, H, W) arrays (the recipes take the first 5,000 training images); float64 arithmetic, float32 out."""
    x = np.asarray(images)
    kh, kw = kernel
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"whitening needs images (N >= 1, C, H >= {kh}, W >= {kw}), got shape {x.shape}")
    if eps <= 0:
        raise ValueError(f"whitening eps must be > 0, got {eps}")
    n, c, h, w = x.shape
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)     # each row a (C, kh, kw) patch
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)                       # ascending
    filters = (eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + eps)).T.reshape(-1, c, kh, kw)
    return np.concatenate([filters, -filters]).astype(np.float32)
