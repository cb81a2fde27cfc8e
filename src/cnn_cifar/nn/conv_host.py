"""The host path of ``Conv2d`` (NumPy arrays): im2col and matrix multiplies, one cache-sized tile of output
pixels at a time.

Forward builds the (C*kh*kw, pixels*N) column matrix of a tile (``im2col``: one strided copy) in a
borrowed workspace and multiplies it by the (out, C*kh*kw) weight matrix; columns are never kept (they are
kh*kw times the input). Runs of tiles go to worker threads (``runtime.in_runs``), each core keeping its
tile in its own cache. Backward takes one of two routes:

- stride 1 with an input gradient (and padding at most dilation*(k-1)): both gradients from the columns of
  dy alone (``_backward_stride1``: the input gradient is a convolution of dy with the flipped kernel);
- otherwise: dW from the rebuilt columns of x, dx (if wanted) as the column gradient W^T dy scattered back
  with ``col2im_add`` (``_backward_cols``).
"""
from __future__ import annotations

from .. import runtime
from ..backend import Array, get_array_module
from .im2col import ConvGeometry, Tile, col2im_add, cols_shape, im2col, tiles


def forward(xc: Array, weight: Array, geo: ConvGeometry, groups: int, ho: int, wo: int,
            bias: Array | None = None) -> Array:
    """y (O, ho, wo, N) of the contiguous input xc (C, H, W, N), plus ``bias`` (O,) where given. With one group
    and a bias of the input's dtype, the bias is the product's last column, against a row of ones under each
    tile's columns: no pass over the output of its own."""
    xp = get_array_module(xc)
    c, n = xc.shape[0], xc.shape[3]
    g, o = groups, weight.shape[0]
    k = c * geo.taps                                                          # the column matrix's rows
    w2 = weight.reshape(g, o // g, -1)
    ones = bias is not None and g == 1 and bias.dtype == xc.dtype
    if ones:
        w2 = xp.concatenate([w2, bias.reshape(1, o, 1)], axis=2)            # (1, O, C*kh*kw + 1)
    y = xp.empty((o, ho, wo, n), dtype=xc.dtype)
    with runtime.padded(xc, geo.ph, geo.pw) as xpad:
        def work(run: list[Tile]) -> None:
            for t in run:
                shape = cols_shape(c, geo, t, n)
                pixels = t.rows * (t.x1 - t.x0) * n
                with runtime.workspace(xp, "cols", (k + ones, pixels), xc.dtype) as buf:
                    im2col(xpad, geo, t, buf[:k].reshape(shape))                # (C*kh*kw, pixels*N)
                    if ones:
                        buf[-1] = 1
                    xp.matmul(w2, buf.reshape(g, -1, pixels), out=t.of(y).reshape(g, o // g, -1))
        runtime.in_runs(work, tiles(ho, wo, k * n * xc.itemsize, xc), xc)
    if bias is not None and not ones:
        y += bias[:, None, None, None]
    return y


def backward(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
             input_grad: bool) -> Array | None:
    """dW added into ``wgrad``; dx (C, H, W, N), or None without ``input_grad``."""
    qh, qw = geo.flipped_padding()
    if input_grad and geo.sh == geo.sw == 1 and qh >= 0 and qw >= 0:
        return _backward_stride1(xc, weight, dyc, geo, groups, wgrad)
    return _backward_cols(xc, weight, dyc, geo, groups, wgrad, input_grad)


def _backward_stride1(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int,
                      wgrad: Array) -> Array:
    """Both gradients of a stride-1 conv from the columns of dy alone (no im2col of x).

    dcols = im2col(dy) with "full" padding (qh, qw) has rows (o, i, j). The input gradient is the
    convolution of dy with the flipped, channel-transposed kernel, W' @ dcols, and the weight
    gradient needs no columns of x either: row (o, i, j) of dcols @ x^T is dW[o, :, kh-1-i, kw-1-j].
    """
    xp = get_array_module(dyc)
    c, h, w, n = xc.shape
    g, o = groups, weight.shape[0]
    kh, kw = geo.kh, geo.kw
    og, cg = o // g, c // g
    qh, qw = geo.flipped_padding()
    flip = ConvGeometry(kh, kw, 1, 1, qh, qw, geo.dh, geo.dw)
    wt = weight.reshape(g, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    wt = wt.reshape(g, cg, og * kh * kw)
    dx = xp.empty((c, h, w, n), dtype=dyc.dtype)
    with runtime.padded(dyc, qh, qw) as dypad:
        def work(run: list[Tile]) -> Array:                        # returns this run's dW part
            gw = xp.zeros((g, og * kh * kw, cg), dtype=wgrad.dtype)
            for t in run:
                with runtime.workspace(xp, "dcols", cols_shape(o, flip, t, n), dyc.dtype) as buf:
                    dcols_g = im2col(dypad, flip, t, buf).reshape(g, og * kh * kw, -1)
                    x_g = t.of(xc).reshape(g, cg, -1)                    # (g, cg, pixels*N)
                    gw += runtime.matmul_released(dcols_g, x_g.transpose(0, 2, 1))
                    xp.matmul(wt, dcols_g, out=t.of(dx).reshape(g, cg, -1))
            return gw
        gw = sum(runtime.in_runs(work, tiles(h, w, o * geo.taps * n * dyc.itemsize, dyc), dyc))
    gw = gw.reshape(g, og, kh, kw, cg)[:, :, ::-1, ::-1].transpose(0, 1, 4, 2, 3)
    wgrad += gw.reshape(wgrad.shape)
    return dx


def _backward_cols(xc: Array, weight: Array, dyc: Array, geo: ConvGeometry, groups: int, wgrad: Array,
                   input_grad: bool) -> Array | None:
    """The general case: dW from the columns of x (as dW^T = cols @ dy^T: BLAS runs a product with the long
    side inside and the short one out faster than dy @ cols^T); dx (if wanted) as the column gradient
    W^T @ dy, scattered back into the padded input with col2im.

    Where a kernel is larger than its stride (3x3 stride 2), neighbouring tiles scatter into shared input
    rows: then the first run of tiles scatters into dx itself and every other run into a zeroed span of its
    own, added in after the runs."""
    xp = get_array_module(dyc)
    c, h, w, n = xc.shape
    g, o = groups, weight.shape[0]
    og, cg = o // g, c // g
    _, ho, wo, _ = dyc.shape
    ph, pw = geo.ph, geo.pw
    w2 = weight.reshape(g, og, -1)
    k = cg * geo.taps
    dxpad = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=dyc.dtype) if input_grad else None
    overlap = (geo.kh - 1) * geo.dh >= geo.sh or (geo.kw - 1) * geo.dw >= geo.sw
    pixel_tiles = tiles(ho, wo, c * geo.taps * n * dyc.itemsize, dyc)
    with runtime.padded(xc, ph, pw) as xpad:
        def work(run: list[Tile]) -> tuple[Array, int, Array | None]:     # this run's dW^T part, its own dx span
            gw = xp.zeros((g, k, og), dtype=wgrad.dtype)
            top, into, first = 0, dxpad, run[0] == pixel_tiles[0]
            if dxpad is not None and overlap and not first:
                top = run[0].y0 * geo.sh
                bottom = (run[-1].y0 + run[-1].rows - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1
                into = xp.zeros((c, bottom - top, dxpad.shape[2], n), dtype=dyc.dtype)
            for t in run:
                dy_g = t.of(dyc).reshape(g, og, -1)                   # (g, og, pixels*N)
                shape = cols_shape(c, geo, t, n)
                with runtime.workspace(xp, "cols", shape, dyc.dtype) as buf:
                    cols = im2col(xpad, geo, t, buf)
                    gw += runtime.matmul_released(cols.reshape(g, k, -1), dy_g.transpose(0, 2, 1))
                if into is not None:
                    with runtime.workspace(xp, "dcols", shape, dyc.dtype) as dcols:
                        xp.matmul(w2.transpose(0, 2, 1), dy_g, out=dcols.reshape(g, k, -1))
                        col2im_add(dcols, into, geo, t._replace(y0=t.y0 - top // geo.sh))
            return gw, top, None if into is dxpad else into
        parts = runtime.in_runs(work, pixel_tiles, dyc)
    for _, top, span in parts:
        if span is not None:
            dxpad[:, top:top + span.shape[1]] += span
    wgrad += sum(gw for gw, _, _ in parts).transpose(0, 2, 1).reshape(wgrad.shape)
    return None if dxpad is None else dxpad[:, ph:ph + h, pw:pw + w]
