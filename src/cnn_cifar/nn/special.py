"""The error function and the standard normal distribution, from array operations (NumPy has no ``erf``):
what GELU needs, on either backend.

Float64 arrays get erf to double precision: the series erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x /
(1*3*...*(2n+1)) below |x| = 3, and Laplace's continued fraction for erfc above. Float32 (and float16, computed
in float32) get Numerical Recipes' Chebyshev fit erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), whose
fractional error is below 1.2e-7 for every z >= 0, and erf's Taylor series below |z| = 1/2: one exp and two
short polynomials per element, cheap enough for the activations of a training step. In float32 erf is then
within 2.5 roundings of the true value everywhere; erfc's relative error grows in the far tail with the
rounding of z^2 inside the exp (see tests/test_special.py for the bounds the tests hold it to).
"""
from __future__ import annotations

import math

from ..backend import Array, get_array_module

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# erf's Taylor series, 2/sqrt(pi) (z - z^3/3 + z^5/10 - z^7/42 + z^9/216 - z^11/1320), highest power first:
# below |z| = 1/2 (where the fit's 1.2e-7 is several roundings of erf) its next term is under 1.3e-8.
_ERF_TAYLOR = tuple(_TWO_OVER_SQRT_PI * c for c in (-1 / 1320, 1 / 216, -1 / 42, 1 / 10, -1 / 3, 1.0))
_TAYLOR_BELOW = 0.5
# P(t), highest power first (Numerical Recipes in C, 2nd ed., section 6.2, erfcc).
_ERFC_FIT = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
             0.37409196, 1.00002368, -1.26551223)
_SERIES_TERMS = 80          # enough for double precision below |x| = 3 (the terms peak near n = x^2)
_FRACTION_DEPTH = 60        # enough for double precision above z = 3


def _erfc_fit(z: Array) -> Array:
    """erfc(z) for z >= 0 in z's (float32) precision."""
    xp = get_array_module(z)
    t = 1.0 / (1.0 + 0.5 * z)
    p = xp.full_like(z, _ERFC_FIT[0])
    for c in _ERFC_FIT[1:]:
        p *= t
        p += c
    return t * xp.exp(p - z * z)


def _erf_taylor(x: Array) -> Array:
    """erf(x) in x's (float32) precision for |x| < 1/2."""
    x2 = x * x
    p = _ERF_TAYLOR[0] * x2
    for c in _ERF_TAYLOR[1:-1]:
        p += c
        p *= x2
    p += _ERF_TAYLOR[-1]
    return p * x


def _erf_series(x: Array) -> Array:
    """erf(x) in float64, accurate for |x| <= 3."""
    xp = get_array_module(x)
    x2 = 2.0 * x * x
    term = x.copy()
    total = x.copy()
    for n in range(1, _SERIES_TERMS):
        term *= x2 / (2 * n + 1)
        total += term
    return _TWO_OVER_SQRT_PI * xp.exp(-x * x) * total


def _erfc_fraction(z: Array) -> Array:
    """erfc(z) in float64 for z >= 3: exp(-z^2) / sqrt(pi) / (z + (1/2) / (z + 1 / (z + (3/2) / (z + ...))))."""
    xp = get_array_module(z)
    tail = z.copy()
    for k in range(_FRACTION_DEPTH, 0, -1):
        tail = z + (k / 2.0) / tail
    return xp.exp(-z * z) / math.sqrt(math.pi) / tail


def erfc(x: Array) -> Array:
    """The complementary error function 1 - erf(x), elementwise, accurate in the tails (no cancellation)."""
    xp = get_array_module(x)
    if x.dtype.itemsize < 4:
        return erfc(x.astype(xp.float32)).astype(x.dtype)
    z = xp.abs(x)
    if x.dtype == xp.float64:
        small = z < 3.0
        upper = xp.where(small, 1.0 - _erf_series(xp.where(small, z, 0.0)),
                         _erfc_fraction(xp.where(small, 3.0, z)))
        return xp.where(x >= 0, upper, 2.0 - upper)
    upper = _erfc_fit(z)
    near = z < _TAYLOR_BELOW
    return xp.where(near, 1.0 - _erf_taylor(xp.where(near, x, 0)),
                    xp.where(x >= 0, upper, 2.0 - upper)).astype(x.dtype, copy=False)


def erf(x: Array) -> Array:
    """The error function, elementwise."""
    xp = get_array_module(x)
    if x.dtype == xp.float64:
        z = xp.abs(x)
        small = z < 3.0
        return xp.where(small, _erf_series(xp.where(small, x, 0.0)),
                        xp.sign(x) * (1.0 - _erfc_fraction(xp.where(small, 3.0, z))))
    if x.dtype.itemsize < 4:
        return erf(x.astype(xp.float32)).astype(x.dtype)
    z = xp.abs(x)
    near = z < _TAYLOR_BELOW
    return xp.where(near, _erf_taylor(xp.where(near, x, 0)), xp.sign(x) * (1.0 - _erfc_fit(z))).astype(x.dtype,
                                                                                                      copy=False)


def normal_cdf(x: Array) -> Array:
    """Phi(x), the standard normal distribution function: erfc(-x / sqrt(2)) / 2 (accurate for x << 0)."""
    return (0.5 * erfc(-x * _INV_SQRT_2)).astype(x.dtype, copy=False)


def normal_pdf(x: Array) -> Array:
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi), the standard normal density."""
    xp = get_array_module(x)
    return (_INV_SQRT_2PI * xp.exp(-0.5 * x * x)).astype(x.dtype, copy=False)
