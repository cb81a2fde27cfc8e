"""The layers' fused GPU kernels (batch norm, im2col/col2im, ReLU's backward), each beside its NumPy reference;
how they are declared, and why: ``cnn_cifar.fused_kernel``."""
from __future__ import annotations

import numpy as np

from ..fused_kernel import Kernel, elementwise, reduction

# ------------------------------------------------------------------------------------------ batch norm
# Rows are channels: x2 (C, M), per-channel values as (C, 1) columns. The forward kernels may end in a fused
# ReLU (BatchNormReLU2d), after adding a residual (BatchNormAddReLU2d's second input); the backward kernels
# take a ``gate``, the fused ReLU's output (the gradient passes where it is positive), or the scalar 1 when
# there is no ReLU to undo. Each direction is one reduction (over M, per channel) and one element-wise pass
# (backward with a residual and a ReLU: one more, the gated gradient the residual also receives).

_BN_PREAMBLE = r"""
template <typename U> struct cnn_welford {      // a count, its mean and its sum of squared deviations
    U n, mean, m2;
    __device__ cnn_welford() : n(0), mean(0), m2(0) {}
    __device__ explicit cnn_welford(U x) : n(1), mean(x), m2(0) {}
};
template <typename U>                           // two partial results merged (Chan, Golub and LeVeque)
__device__ cnn_welford<U> cnn_welford_merge(const cnn_welford<U>& a, const cnn_welford<U>& b) {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    cnn_welford<U> r;
    r.n = a.n + b.n;
    const U d = b.mean - a.mean, f = b.n / r.n;
    r.mean = a.mean + d * f;
    r.m2 = a.m2 + b.m2 + d * d * a.n * f;
    return r;
}
template <typename U>                           // the batch's mean and biased variance, the running statistics
__device__ void cnn_bn_stats_out(const cnn_welford<U>& a, U& mean, U& var, U& rmean, U& rvar, U mom,
                                 long long& tracked, ptrdiff_t channel) {
    mean = a.mean;
    var = a.m2 / a.n;
    rmean = (1 - mom) * rmean + mom * mean;
    rvar = (1 - mom) * rvar + mom * a.m2 / (a.n - 1);       // unbiased, as PyTorch tracks it
    if (channel == 0) tracked += 1;
}
template <typename U> struct cnn_pair {          // two sums in one pass
    U s, d;
    __device__ cnn_pair() : s(0), d(0) {}
    __device__ cnn_pair(U s_, U d_) : s(s_), d(d_) {}
};
template <typename U> __device__ cnn_pair<U> cnn_pair_add(const cnn_pair<U>& a, const cnn_pair<U>& b) {
    return cnn_pair<U>(a.s + b.s, a.d + b.d);
}
"""


def _bn_stats_reference(x, mom, mean, var, rmean, rvar, tracked, axis=None, keepdims=False):
    assert axis == 1 and not keepdims
    m = x.shape[1]
    mu = x.mean(axis=1)
    v = ((x - mu[:, None]) ** 2).mean(axis=1)
    return mu, v, (1 - mom) * rmean + mom * mu, (1 - mom) * rvar + mom * v * (m / (m - 1)), tracked + 1


bn_stats = reduction(
    "T x, T mom", "T mean, T var, T rmean, T rvar, raw int64 tracked",
    "cnn_welford<T>(x)", "cnn_welford_merge(a, b)",
    "cnn_bn_stats_out(a, mean, var, rmean, rvar, mom, tracked[0], _out_ind.get()[0])", "cnn_welford<T>()",
    "cnn_bn_stats", _bn_stats_reference, reduce_type="cnn_welford<T>", preamble=_BN_PREAMBLE)
"""Over axis 1 of x2 (C, M), into the given (C,) outputs: the batch's mean and biased variance (Welford's
one-pass, numerically as safe as two passes), the running statistics' momentum update (variance unbiased)
and the batch count (a 0-d int64), in one launch. (``_out_ind`` is the output indexer of CuPy's reduction
template, here 1-D: the channel; tools/compile_kernels.py compiles this against CuPy's own generator.)"""


def _relu(v):
    """The fused ReLU's reference: max(v, 0), with NaN passed through (as the CUDA ``v < 0 ? 0 : v``)."""
    return np.where(v < 0, 0, v)


_EPILOGUES = {   # name suffix: (extra input, CUDA statement turning v into y, reference)
    "": ("", "y = v;", lambda v: v),
    "_relu": ("", "y = v < (T)(0.0f) ? (T)(0.0f) : v;", _relu),
    "_add_relu": (", T res", "v += res; y = v < (T)(0.0f) ? (T)(0.0f) : v;", _relu),
}


def _bn_forward_kernels(suffix: str) -> tuple[Kernel, Kernel]:
    """The training forward (normalised values for backward, and the output) and the inference forward, each
    ending in the epilogue ``suffix`` names; the references add ``res`` when the kernel takes one."""
    extra, epilogue, act = _EPILOGUES[suffix]

    def train_ref(x, mean, var, eps, w, b, res=0.0):
        xhat = (x - mean) / np.sqrt(var + eps)
        return xhat, act(xhat * w + b + res)

    def eval_ref(x, rmean, rvar, eps, w, b, res=0.0):
        return act((x - rmean) / np.sqrt(rvar + eps) * w + b + res)

    train = elementwise("T x, T mean, T var, T eps, T w, T b" + extra, "T xhat, T y",
                        "xhat = (x - mean) * rsqrt(var + eps); T v = xhat * w + b; " + epilogue,
                        "cnn_bn_forward" + suffix, train_ref)
    infer = elementwise("T x, T rmean, T rvar, T eps, T w, T b" + extra, "T y",
                        "T v = (x - rmean) * rsqrt(rvar + eps) * w + b; " + epilogue, "cnn_bn_eval" + suffix,
                        eval_ref)
    return train, infer


# Normalise with the batch's mean and variance (training; the normalised values are kept for backward) or
# with the running ones (inference), scale and shift, then the epilogue: by suffix "" (none: BatchNorm1d/2d),
# "_relu" (BatchNormReLU2d), "_add_relu" (a residual added before the ReLU: BatchNormAddReLU2d).
BN_FORWARD, BN_EVAL = {}, {}
for _suffix in _EPILOGUES:
    BN_FORWARD[_suffix], BN_EVAL[_suffix] = _bn_forward_kernels(_suffix)



def _gated(dy, gate):
    """The gradient through a ReLU from its output ``gate``: dy where the output is positive, else 0."""
    return np.where(gate > 0, dy, 0)


_GATED = "(gate > (T)(0.0f) ? dy : (T)(0.0f))"


def _bn_grad_sums_reference(dy, gate, xhat, dbeta, dgamma, wgrad, bgrad, axis=None, keepdims=False):
    assert axis == 1 and not keepdims
    g = _gated(dy, gate)
    sb, sg = g.sum(axis=1), (g * xhat).sum(axis=1)
    return sb, sg, wgrad + sg, bgrad + sb


bn_grad_sums = reduction(
    "T dy, T gate, T xhat", "T dbeta, T dgamma, T wgrad, T bgrad",
    "cnn_pair<T>(" + _GATED + ", " + _GATED + " * xhat)", "cnn_pair_add(a, b)",
    "dbeta = a.s, dgamma = a.d, bgrad += a.s, wgrad += a.d", "cnn_pair<T>()", "cnn_bn_grad_sums",
    _bn_grad_sums_reference, reduce_type="cnn_pair<T>", preamble=_BN_PREAMBLE)
"""Over axis 1, into the given (C,) outputs: sum(g) and sum(g * xhat) for the gated dy g (the bias's and the
weight's gradients, and terms of the input's), also added into the parameters' gradients, in one launch."""

bn_backward = elementwise(
    "T dy, T gate, T xhat, T w, T var, T eps, T dbeta, T dgamma, T inv_m", "T dx",
    "dx = w * rsqrt(var + eps) * (" + _GATED + " - (dbeta + xhat * dgamma) * inv_m)", "cnn_bn_backward",
    lambda dy, gate, xhat, w, var, eps, dbeta, dgamma, inv_m:
        w / np.sqrt(var + eps) * (_gated(dy, gate) - (dbeta + xhat * dgamma) * inv_m))
"""dx = gamma * invstd / M * (M * g - sum(g) - xhat * sum(g * xhat)), g the gated dy, in one pass."""


# ------------------------------------------------------------------------------------------ im2col / col2im
# On a GPU a convolution builds its whole column matrix in one launch, reading the unpadded (C, H, W, N) input
# with the padding applied by a bounds check (no padded copy), instead of kh*kw strided copies; the input
# gradient gathers each pixel's column entries in one launch (no zero fill, no scatter-add, no atomics).

_GEOMETRY = ("int32 H, int32 W, int32 N, int32 Ho, int32 Wo, int32 KH, int32 KW, int32 SH, int32 SW, "
             "int32 PH, int32 PW, int32 DH, int32 DW")


def _taps(c, h, w, n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """(padded shape, [(i, j, rows slice, cols slice)]) of the taps: the reference's shared geometry."""
    from .im2col import ConvGeometry
    g = ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)
    return (c, h + 2 * ph, w + 2 * pw, n), [(i, j, *g.window(i, j, ho, wo)) for i in range(kh) for j in range(kw)]


def _im2col_reference(x, h, w, n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, cols):
    c = x.shape[0]
    padded, taps = _taps(c, h, w, n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    xpad = np.zeros(padded, dtype=x.dtype)
    xpad[:, ph:ph + h, pw:pw + w] = x.reshape(c, h, w, n)
    out = np.empty((c, kh, kw, ho, wo, n), dtype=x.dtype)
    for i, j, hs, ws in taps:
        out[:, i, j] = xpad[:, hs, ws]
    return out.reshape(cols.shape)


def _col2im_reference(cols, h, w, n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    c = cols.size // (kh * kw * ho * wo * n)
    padded, taps = _taps(c, h, w, n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    acc = np.zeros(padded, dtype=np.float32 if cols.dtype == np.float16 else cols.dtype)
    c6 = cols.reshape(c, kh, kw, ho, wo, n)
    for i, j, hs, ws in taps:
        acc[:, hs, ws] += c6[:, i, j]
    return np.ascontiguousarray(acc[:, ph:ph + h, pw:pw + w]).astype(cols.dtype, copy=False)


def _split_index(fields: str) -> str:
    """CUDA that splits the loop index ``i`` into coordinates by the divisions ``fields`` (on ``t``), in 32-bit
    integers when the loop is under 2^31 elements (64-bit division is several times slower on a GPU)."""
    return ("if (_ind.size() <= 0x7fffffff) { int t = (int)i; " + fields + " }\n"
            "    else { ptrdiff_t t = i; " + fields + " }")


im2col_gpu = elementwise(
    "raw T x, " + _GEOMETRY, "T cols",
    """
    int smp, xo, yo, kj, ki;
    ptrdiff_t c;
    """ + _split_index("smp = t % N; t /= N; xo = t % Wo; t /= Wo; yo = t % Ho; t /= Ho; kj = t % KW; t /= KW; "
                       "ki = t % KH; c = t / KH;") + """
    const int yy = yo * SH + ki * DH - PH;
    const int xx = xo * SW + kj * DW - PW;
    cols = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((c * H + yy) * W + xx) * N + smp] : (T)(0.0f);
    """, "cnn_im2col", _im2col_reference)
"""cols (C*kh*kw, Ho*Wo*N), rows (c, i, j), columns (y, x, n), from the contiguous unpadded x (C, H, W, N)."""

col2im_gpu = elementwise(
    "raw T cols, " + _GEOMETRY, "T dx",
    """
    int smp, xx, yy;
    ptrdiff_t c;
    """ + _split_index("smp = t % N; t /= N; xx = t % W; t /= W; yy = t % H; c = t / H;") + """
    // float16 columns (autocast) are summed in float, as PyTorch's col2im accumulates
    typedef typename cupy::type_traits::conditional<sizeof(T) == 2, float, T>::type acc_t;
    acc_t acc = 0;
    for (int ki = 0; ki < KH; ++ki) {
        const int ynum = yy + PH - ki * DH;
        if (ynum < 0 || ynum % SH != 0) continue;
        const int yo = ynum / SH;
        if (yo >= Ho) continue;
        for (int kj = 0; kj < KW; ++kj) {
            const int xnum = xx + PW - kj * DW;
            if (xnum < 0 || xnum % SW != 0) continue;
            const int xo = xnum / SW;
            if (xo >= Wo) continue;
            acc += static_cast<acc_t>(cols[((((c * KH + ki) * KW + kj) * Ho + yo) * Wo + xo) * N + smp]);
        }
    }
    dx = (T)acc;
    """, "cnn_col2im", _col2im_reference)
"""dx (C, H, W, N), flat: each input pixel's sum of the column entries that read it (im2col's adjoint),
gathered. Called with ``size=C*H*W*N`` (its inputs are all raw), it allocates its flat output itself."""


# ------------------------------------------------------------------------------------------ activations
relu_backward = elementwise(
    "T dy, T gate", "T dx", "dx = " + _GATED, "cnn_relu_backward", lambda dy, gate: _gated(dy, gate).astype(dy.dtype))
"""ReLU's input gradient from its output (the gate, as batch norm's fused ReLU keeps it): one pass instead of a
comparison and a multiply."""


def _gelu_reference(x):
    from . import special
    xd = x.astype(np.float64)
    cdf = special.normal_cdf(xd)
    return (xd * cdf).astype(x.dtype), (cdf + xd * special.normal_pdf(xd)).astype(x.dtype)


gelu = elementwise("T x", "T y, T g", """
    double v = (double)x;
    double c = 0.5 * erfc(-v * 0.70710678118654752440);
    y = (T)(v * c);
    g = (T)(c + v * 0.39894228040143267794 * exp(-0.5 * v * v));
""", "cnn_gelu", _gelu_reference)
"""GELU's output x Phi(x) and its gradient factor Phi(x) + x phi(x) in one pass, computed in double (erfc keeps
the lower tail): the many launches of ``special``'s array form become one."""
