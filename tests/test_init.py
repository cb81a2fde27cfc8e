"""Initialisers: the data-dependent whitening of a first convolution (the fast CIFAR recipes' frozen layer)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_cifar import nn
from cnn_cifar.nn import init


def _images(n=200, seed=0):
    """Correlated channels and neighbouring pixels, as in photographs."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 1, 9, 9)).cumsum(axis=2).cumsum(axis=3) * 0.1
    return np.concatenate([base + 0.1 * rng.standard_normal((n, 1, 9, 9)) for _ in range(3)], axis=1)


def test_whitening_filters_make_the_patches_covariance_the_identity():
    """Applied as a 2x2 convolution without padding, the first half of the filters turns the images' patches
    into outputs whose uncentred covariance is diag(lambda / (lambda + eps)), nearly the identity; the second
    half is the first negated; the filters come largest eigenvalue first."""
    x = _images()
    w = init.whitening(x, (2, 2), eps=5e-4)
    assert w.shape == (24, 3, 2, 2) and w.dtype == np.float32
    np.testing.assert_array_equal(w[12:], -w[:12])
    conv = nn.Conv2d(3, 24, 2, bias=False)
    conv.weight.data[...] = w
    with nn.no_grad():
        y = conv(x.astype(np.float32)).astype(np.float64)[:, :12]
    cov = np.einsum("nchw,ndhw->cd", y, y) / (y.shape[0] * y.shape[2] * y.shape[3])
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
    lam = np.linalg.eigvalsh(np.einsum("nhwi,nhwj->ij", *(patches.reshape(*patches.shape[:3], 12),) * 2)
                             / (patches.shape[0] * patches.shape[1] * patches.shape[2]))[::-1]
    np.testing.assert_allclose(cov, np.diag(lam / (lam + 5e-4)), atol=2e-4)
    norms = np.linalg.norm(w[:12].reshape(12, -1), axis=1)
    assert (np.diff(norms) >= 0).all()                             # 1/sqrt(lambda + eps) grows as lambda falls


@pytest.mark.parametrize("images,msg", [
    (np.zeros((0, 3, 32, 32)), r"whitening needs images \(N >= 1, C, H >= 2, W >= 2\), got shape \(0, 3, 32, 32\)"),
    (np.zeros((5, 3, 32)), r"got shape \(5, 3, 32\)"),
    (np.zeros((5, 3, 1, 32)), r"got shape \(5, 3, 1, 32\)"),
])
def test_whitening_refuses_no_images_or_the_wrong_shape(images, msg):
    with pytest.raises(ValueError, match=msg):
        init.whitening(images)
