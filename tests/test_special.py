"""nn.special (erf, erfc and the normal distribution from array operations) against Python's math.erf on a
dense grid, and the GELU layer against PyTorch's exact GELU, finite differences and float32/float16 use."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_cifar import backend, nn
from cnn_cifar.nn import special

from gradcheck import check_module

GRID = np.arange(-9.0, 9.0, 1 / 2048)                 # 36,864 points, exactly representable in float32


def _math(fn, x: np.ndarray) -> np.ndarray:
    return np.array([fn(float(v)) for v in x])


def test_erf_and_erfc_in_float64_are_accurate_to_double_precision(xp):
    x = xp.asarray(GRID)
    np.testing.assert_allclose(backend.to_numpy(special.erf(x)), _math(math.erf, GRID), rtol=0, atol=3e-15)
    np.testing.assert_allclose(backend.to_numpy(special.erfc(x)), _math(math.erfc, GRID), rtol=1e-10, atol=0)


def test_erf_in_float32_is_within_a_few_roundings_and_erfc_keeps_its_tail(xp):
    x32 = GRID.astype(np.float32)
    erf32 = backend.to_numpy(special.erf(xp.asarray(x32)))
    erfc32 = backend.to_numpy(special.erfc(xp.asarray(x32)))
    assert erf32.dtype == erfc32.dtype == np.float32
    want = _math(math.erf, GRID)
    ulp = np.spacing(np.maximum(np.abs(want), 2.0 ** -126).astype(np.float32)).astype(np.float64)
    assert (np.abs(erf32 - want) <= 3 * ulp + 1e-45).all()
    rel = np.abs(erfc32 - _math(math.erfc, GRID)) / _math(math.erfc, GRID)
    assert rel[GRID < 4].max() < 2e-6 and rel.max() < 1e-5        # to 1e-36, where 1 - erf has no digit left


def test_the_derivative_of_erf_is_two_over_sqrt_pi_exp_minus_x_squared():
    x, h = GRID[::16], 1e-5
    numeric = (special.erf(x + h) - special.erf(x - h)) / (2 * h)
    np.testing.assert_allclose(numeric, 2 / math.sqrt(math.pi) * np.exp(-x * x), rtol=0, atol=1e-9)


def test_normal_cdf_and_pdf():
    np.testing.assert_allclose(special.normal_cdf(GRID), _math(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)), GRID),
                               rtol=1e-10)
    np.testing.assert_allclose(special.normal_pdf(GRID), np.exp(-GRID ** 2 / 2) / math.sqrt(2 * math.pi), rtol=1e-15)


# torch 2.13.0: torch.nn.functional.gelu(x) (approximate='none') in float64 and its gradient for dy = 1.
TORCH_X = [-6.0, -3.0, -1.5, -0.7, -0.1, 0.0, 0.05, 0.5, 1.0, 2.2, 4.0, 9.0]
TORCH_Y = [-5.919525869479969e-09, -0.00404969409489031, -0.10021080190328704, -0.1693745565561511,
           -0.0460172162722971, 0.0, 0.025996940291918624, 0.34573123063700656, 0.841344746068543,
           2.1694124154703034, 3.9998733150326675, 9.0]
TORCH_DX = [-3.546870945402639e-08, -0.01194564720418392, -0.1274691922299796, 0.023385898866340155,
            0.4204769079752698, 0.5, 0.5398610015431107, 0.8674951246561629, 1.0833154705876864,
            1.0641406567482106, 1.0005036496612265, 1.0]


def test_gelu_matches_torch_forward_and_backward(xp):
    """To 1e-9 relative: torch computes x / 2 * (1 + erf(x / sqrt(2))), which cancels for x << 0 (at x = -6 its
    value is 1.3e-10 off math.erfc's; ours, from erfc, agrees with math.erfc to 1e-13: checked below)."""
    gelu = nn.GELU()
    x = xp.asarray(TORCH_X, dtype=np.float64)
    y = backend.to_numpy(gelu(x))
    np.testing.assert_allclose(y, TORCH_Y, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(y, [v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in TORCH_X], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(backend.to_numpy(gelu.backward(xp.ones_like(x))), TORCH_DX, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 4, 5)])
def test_gelu_gradcheck(xp, shape):
    x = backend.to_device(np.random.default_rng(2).standard_normal(shape) * 2)
    check_module(nn.GELU(), x)


def test_gelu_in_float32_and_float16_keeps_the_dtype_and_the_value(xp):
    x64 = np.random.default_rng(3).standard_normal(4096) * 3
    want = x64 * 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in x64])
    for dtype, tol in ((np.float32, 1e-6), (np.float16, 1e-3)):
        gelu = nn.GELU()
        y = gelu(xp.asarray(x64.astype(dtype)))
        dx = gelu.backward(xp.ones(4096, dtype=dtype))
        assert y.dtype == dx.dtype == dtype
        x = x64.astype(dtype).astype(np.float64)                         # the rounded input's exact GELU
        exact = x * 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in x])
        assert np.abs(backend.to_numpy(y) - exact).max() <= tol * np.abs(exact).max()
        assert np.abs(exact - want).max() < 0.02 * 3                     # (the inputs themselves were rounded)


def test_gelu_backward_without_forward_is_the_librarys_error():
    with pytest.raises(RuntimeError, match="GELU: backward called without a forward"):
        nn.GELU().backward(np.ones(3))



def test_host_float32_gelu_blocks_match_the_exact_values_and_gradient(monkeypatch):
    """gelu_host over several blocks (and, above the threading threshold, over the cores): GELU and its
    derivative within 10 float32 roundings (6e-7 relative; the worst seen is 4.5e-7, near x = -0.07, from the
    fit's 1.2e-7 and its float32 polynomial) of float64's exact values from math.erfc, the far tails included
    (where erfc's error grows with the rounding of x^2), and the same bits on one thread as on two."""
    from cnn_cifar import runtime
    from cnn_cifar.nn import gelu_host
    x = np.concatenate([np.linspace(-12, 12, 3 * gelu_host.BLOCK + 17), [0.0, -0.0, 40.0, -40.0]]).astype(np.float32)
    y, g = gelu_host.forward(x, keep_grad=True)
    x64 = x.astype(np.float64)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    pdf = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    growth = 1 + x64 ** 2 / 2
    assert np.all(np.abs(y - x64 * cdf) <= 6e-7 * growth * np.abs(x64 * cdf) + 1e-45)
    assert np.all(np.abs(g - (cdf + x64 * pdf)) <= 6e-7 * growth * (cdf + np.abs(x64 * pdf)) + 1e-45)
    assert gelu_host.forward(x, keep_grad=False)[1] is None
    big = np.random.default_rng(4).standard_normal(2_000_000).astype(np.float32) * 3       # 8 MB: split over cores
    two = gelu_host.forward(big, keep_grad=True)
    monkeypatch.setattr(runtime, "THREADS", 1)
    one = gelu_host.forward(big, keep_grad=True)
    np.testing.assert_array_equal(two[0], one[0])
    np.testing.assert_array_equal(two[1], one[1])
