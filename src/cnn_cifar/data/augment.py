"""Vectorised batch augmentation of (N, 3, H, W) images, and normalisation to float32.

Crop and flip work on uint8; shift-scale-rotate and colour jitter on float32 pixel values in [0, 255];
cutout and mixing on the normalised batch. Every transform is vectorised over the batch (per-image
parameters, no loop over images or pixels). All randomness comes from the caller's NumPy generator, so
one seed fixes a whole run and a saved generator state resumes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator, mode: str = "constant") -> np.ndarray:
    """Pad by ``padding`` (zeros, or ``mode="reflect"``: mirrored without repeating the edge, as torch's
    'reflect') and cut a random HxW window per image (one gather, no per-image loop). Reflect padding is the
    fast recipes' random translation."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode=mode)
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


def cutout(x: np.ndarray, size: int, rng: np.random.Generator, fill: np.ndarray | None = None,
           p: float = 1.0) -> np.ndarray:
    """Fill one size x size square per image (centre uniform, clipped at the border), in place, with
    probability ``p`` per image. ``fill`` is a per-channel value (default 0: on a normalised batch, the
    dataset mean)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = np.arange(h), np.arange(w)
    my = (ys >= y0[:, None]) & (ys < (y0 + size)[:, None])
    mx = (xs >= x0[:, None]) & (xs < (x0 + size)[:, None])
    mask = my[:, :, None] & mx[:, None, :]
    if p < 1.0:
        mask &= (rng.random(n) < p)[:, None, None]
    if fill is None:
        x *= ~mask[:, None, :, :]
    else:
        np.copyto(x, np.asarray(fill, x.dtype)[None, :, None, None], where=mask[:, None, :, :])
    return x


# ---------------------------------------------------------------------------------- shift, scale, rotate
def ssr_params(n: int, shift: float, scale: float, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Per-image (angle in degrees, scale, dx, dy) as albumentations' ShiftScaleRotate draws them: angle in
    [-degrees, degrees], scale in [1 - scale, 1 + scale], shifts in [-shift, shift] of the width/height."""
    u = rng.random((n, 4))
    lo = np.array([-degrees, 1.0 - scale, -shift, -shift])
    hi = np.array([degrees, 1.0 + scale, shift, shift])
    return lo + (hi - lo) * u


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored at the border pixels (OpenCV's BORDER_REFLECT_101: ... c b | a b c ... | ... b a)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def affine_warp(x: np.ndarray, params: np.ndarray, border: str = "reflect") -> np.ndarray:
    """Rotate by angle (counter-clockwise, about the image centre), scale, then shift each image, with
    bilinear sampling: cv2.warpAffine of cv2.getRotationMatrix2D(((w-1)/2, (h-1)/2), angle, scale) plus
    (dx*w, dy*h), as albumentations' ShiftScaleRotate. ``border`` "reflect" mirrors (BORDER_REFLECT_101),
    "constant" samples zeros outside. x: float (N, C, H, W); params: (N, 4) from ssr_params. One gather of
    the four neighbours for the whole batch."""
    n, c, h, w = x.shape
    theta = np.deg2rad(params[:, 0])
    a, b = params[:, 1] * np.cos(theta), params[:, 1] * np.sin(theta)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    # dst = A (src - c) + c + d with A = [[a, b], [-b, a]]; invert: src = A^-1 (dst - c - d) + c
    ux = np.arange(w)[None, None, :] - cx - (params[:, 2] * w)[:, None, None]
    uy = np.arange(h)[None, :, None] - cy - (params[:, 3] * h)[:, None, None]
    det = (a * a + b * b)[:, None, None]
    a_, b_ = a[:, None, None], b[:, None, None]
    sx = (a_ * ux - b_ * uy) / det + cx                       # (N, H, W)
    sy = (b_ * ux + a_ * uy) / det + cy
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).astype(x.dtype), (sy - y0).astype(x.dtype)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xs = np.stack([x0, x0 + 1, x0, x0 + 1])                 # the four neighbours: (4, N, H, W)
    ys = np.stack([y0, y0, y0 + 1, y0 + 1])
    wts = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    if border == "constant":
        wts = wts * ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h))
        xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    else:
        xs, ys = _reflect101(xs, w), _reflect101(ys, h)
    idx = (ys * w + xs).transpose(1, 0, 2, 3).reshape(n, 1, 4 * h * w)
    vals = np.take_along_axis(x.reshape(n, c, h * w), idx, axis=2).reshape(n, c, 4, h, w)
    return np.einsum("ncqhw,qnhw->nchw", vals, wts.astype(x.dtype, copy=False))


def shift_scale_rotate(x: np.ndarray, shift: float, scale: float, degrees: float, p: float,
                       rng: np.random.Generator, border: str = "reflect") -> np.ndarray:
    """A random affine per image, applied to each image with probability ``p`` (in place on float x)."""
    n = x.shape[0]
    params = ssr_params(n, shift, scale, degrees, rng)
    sel = rng.random(n) < p
    if sel.any():
        x[sel] = affine_warp(x[sel], params[sel], border)
    return x


# ---------------------------------------------------------------------------------- colour jitter
GRAY = (0.2989, 0.587, 0.114)                      # torchvision's rgb_to_grayscale weights


def jitter_params(n: int, brightness: float, contrast: float, saturation: float, hue: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """torchvision ColorJitter's draws for each image: an order of the four adjustments (a permutation per
    row) and their factors, brightness/contrast/saturation in [max(0, 1 - v), 1 + v], hue in [-h, h];
    a 0 setting leaves that adjustment out (factor NaN)."""
    order = np.argsort(rng.random((n, 4)), axis=1)
    u = rng.random((n, 4))
    factors = np.full((n, 4), np.nan)
    for k, v in enumerate((brightness, contrast, saturation)):
        if v:
            lo = max(0.0, 1.0 - v)
            factors[:, k] = lo + (1.0 + v - lo) * u[:, k]
    if hue:
        factors[:, 3] = -hue + 2 * hue * u[:, 3]
    return order, factors


def _gray(x: np.ndarray) -> np.ndarray:
    return GRAY[0] * x[:, 0] + GRAY[1] * x[:, 1] + GRAY[2] * x[:, 2]


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's _rgb2hsv on (N, 3, H, W) values in [0, 1]."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = x.max(axis=1), x.min(axis=1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    crd = np.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    return np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0), s, maxc


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torchvision's _hsv2rgb: back to (N, 3, H, W)."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = np.stack([np.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    return np.take_along_axis(table, i[None, None], axis=1)[:, 0].transpose(1, 0, 2, 3)


def adjust(x: np.ndarray, kind: int, f: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """One torchvision adjustment with per-image factor ``f``: 0 brightness, 1 contrast, 2 saturation, 3 hue
    (x float in [0, peak])."""
    f = f.astype(x.dtype)[:, None, None, None]
    if kind == 0:
        return np.clip(f * x, 0, peak)
    if kind == 1:
        mean = _gray(x).mean(axis=(1, 2))[:, None, None, None]
        return np.clip(f * x + (1 - f) * mean, 0, peak)
    if kind == 2:
        return np.clip(f * x + (1 - f) * _gray(x)[:, None], 0, peak)
    h, s, v = _rgb_to_hsv(x / peak)
    return (_hsv_to_rgb(np.mod(h + f[:, 0], 1.0), s, v) * peak).astype(x.dtype, copy=False)


def apply_jitter(x: np.ndarray, order: np.ndarray, factors: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """The adjustments in each image's own order (4 positions x 4 kinds of masked, batched passes)."""
    for pos in range(4):
        for kind in range(4):
            sel = (order[:, pos] == kind) & ~np.isnan(factors[:, kind])
            if sel.any():
                x[sel] = adjust(x[sel], kind, factors[sel, kind], peak)
    return x


def color_jitter(x: np.ndarray, jitter: tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """torchvision ColorJitter(brightness, contrast, saturation, hue) per image, in place on float x."""
    order, factors = jitter_params(x.shape[0], *jitter, rng)
    return apply_jitter(x, order, factors)


# ---------------------------------------------------------------------------------- mixup, cutmix
@dataclass
class MixedTargets:
    """Labels of a mixed batch: the loss is lam * CE(y_a) + (1 - lam) * CE(y_b) (see training/mixing.py)."""
    y_a: np.ndarray
    y_b: np.ndarray
    lam: float

    def __len__(self) -> int:
        return len(self.y_a)

    @property
    def dominant(self) -> np.ndarray:
        """The label with the larger share, which train accuracy counts."""
        return self.y_a if self.lam >= 0.5 else self.y_b


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, MixedTargets]:
    """Mixup (Zhang et al.): lam ~ Beta(alpha, alpha) for the batch, x = lam x + (1 - lam) x[perm]."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    return lam * x + (1.0 - lam) * x[perm], MixedTargets(y, y[perm], lam)


def cutmix(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, MixedTargets]:
    """CutMix (Yun et al., the authors' rand_bbox): a box of about (1 - lam) of the area, lam ~ Beta(alpha,
    alpha), centred uniformly and clipped, pasted from x[perm]; lam becomes the area kept."""
    n, _, h, w = x.shape
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(n)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, MixedTargets(y, y[perm], 1.0 - (y1 - y0) * (x1 - x0) / (h * w))


def normalize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (or float pixel values in [0, 255]) -> float32 (x/255 - mean)/std per channel, in one
    multiply-add (a new array)."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float32)))[None, :, None, None]
    shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32))[None, :, None, None]
    out = x.astype(np.float32)
    out *= scale
    out += shift
    return out
