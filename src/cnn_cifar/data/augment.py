"""Vectorised batch augmentation on uint8 (N, 3, H, W) images, and normalisation to float32.

All randomness comes from the caller's NumPy generator, so one seed fixes a whole run.
"""
from __future__ import annotations

import numpy as np


def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``padding`` and cut a random HxW window per image (one gather, no per-image loop)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    rows = (oy[:, None] + np.arange(h))[:, None, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, None, :]
    return xp_[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image left-right with probability 1/2 (returns a new array)."""
    flip = rng.random(x.shape[0]) < 0.5
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def cutout(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Zero one size x size square per image (centre uniform, clipped at the border), in place."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = np.arange(h), np.arange(w)
    my = (ys >= y0[:, None]) & (ys < (y0 + size)[:, None])
    mx = (xs >= x0[:, None]) & (xs < (x0 + size)[:, None])
    mask = my[:, :, None] & mx[:, None, :]
    x *= ~mask[:, None, :, :]
    return x


def normalize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 -> float32 (x/255 - mean)/std per channel, in one multiply-add."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float32)))[None, :, None, None]
    shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32))[None, :, None, None]
    out = x.astype(np.float32)
    out *= scale
    out += shift
    return out
