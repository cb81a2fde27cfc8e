"""Plain-loop reference forwards (test-only, float64 NumPy): the definitions the layers must match.

Each loops over output positions and takes one window at a time, exactly as the PyTorch
documentation defines the operation, so it shares no code or trick with the library's im2col,
tiles, layout views or padding buffers.
"""
from __future__ import annotations

import numpy as np


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           groups: int = 1) -> np.ndarray:
    """torch.nn.functional.conv2d: cross-correlation, weight (O, C/groups, kh, kw); output channel o of group g
    sees input channels [g*C/groups, (g+1)*C/groups)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    assert cg * groups == c and o % groups == 0
    og = o // groups
    ho, wo = _out(h, kh, sh, ph, dh), _out(wd, kw, sw, pw, dw)
    xp = _pad(x, ph, pw)
    y = np.zeros((n, o, ho, wo))
    for oc in range(o):
        g = oc // og
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(ho):
            for j in range(wo):
                patch = xs[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                y[:, oc, i, j] = np.einsum("nckl,ckl->n", patch, w[oc])
        if b is not None:
            y[:, oc] += b[oc]
    return y


def _pool(x: np.ndarray, kernel, stride, padding, reduce, pad_value: float) -> np.ndarray:
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = _out(h, kh, sh, ph, 1), _out(w, kw, sw, pw, 1)
    xp = _pad(x, ph, pw, pad_value)
    y = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = reduce(xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw], axis=(2, 3))
    return y


def max_pool2d(x: np.ndarray, kernel, stride, padding=(0, 0)) -> np.ndarray:
    """torch.nn.functional.max_pool2d: padding is -inf (never the maximum)."""
    return _pool(x, kernel, stride, padding, np.max, -np.inf)


def avg_pool2d(x: np.ndarray, kernel, stride, padding=(0, 0)) -> np.ndarray:
    """torch.nn.functional.avg_pool2d with count_include_pad=True (the default): zeros count in the mean."""
    return _pool(x, kernel, stride, padding, np.mean, 0.0)
