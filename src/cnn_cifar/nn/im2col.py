"""Convolution geometry, cache-sized tiles of output pixels, and im2col / col2im on (C, H, W, N) buffers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from .. import backend, runtime
from ..backend import Array, get_array_module


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, padding and dilation of a conv or pool, per axis, with the output size they give."""
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    dh: int = 1
    dw: int = 1

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (ho, wo) for an h x w input (either may be < 1 when the kernel does not fit)."""
        return ((h + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1,
                (w + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1)

    def window(self, i: int, j: int, ho: int, wo: int, y0: int = 0, x0: int = 0) -> tuple[slice, slice]:
        """The strided (H, W) slices of the padded input seen by kernel tap (i, j) for output rows
        [y0, y0 + ho) and output columns [x0, x0 + wo)."""
        top, left = y0 * self.sh + i * self.dh, x0 * self.sw + j * self.dw
        return (slice(top, top + self.sh * (ho - 1) + 1, self.sh),
                slice(left, left + self.sw * (wo - 1) + 1, self.sw))

    def flipped_padding(self) -> tuple[int, int]:
        """The "full" padding (dilation*(k-1) - padding) of the stride-1 input gradient as a convolution of dy."""
        return self.dh * (self.kh - 1) - self.ph, self.dw * (self.kw - 1) - self.pw


# Convolutions build their column matrix one tile of output pixels at a time, each tile about this
# many bytes: small enough to stay in cache between im2col writing it and the matmul reading it (one tile
# per core, in the L3 cache they share; a whole-batch matrix goes through memory twice), large enough that
# the Python around each tile (held under the GIL the cores' runs share) stays small. The default is
# measured by benchmarks/tile_tune.py (the Performance page of the manual has the figures).
TILE_BYTES = int(os.environ.get("CNN_CIFAR_TILE_BYTES", str(4 << 20)))
# A smaller conv is cut into smaller tiles, two per core (``runtime.in_runs`` splits runs of tiles over the
# cores), but not below this: under it a tile's multiply is too short to be worth a thread hand-off.
MIN_TILE_BYTES = 256 << 10


class Tile(NamedTuple):
    """Output rows [y0, y0 + rows) and columns [x0, x1) of a conv; several rows only with all columns."""
    y0: int
    rows: int
    x0: int
    x1: int

    def of(self, a: Array) -> Array:
        """This tile of a (C, Ho, Wo, N) array as a (C, pixels*N) matrix (a view for contiguous a)."""
        return a[:, self.y0:self.y0 + self.rows, self.x0:self.x1].reshape(a.shape[0], -1)


def tiles(ho: int, wo: int, pixel_bytes: int, a: Array) -> list[Tile]:
    """Tiles covering an ho x wo output whose column matrix takes ``pixel_bytes`` per output pixel:
    whole rows grouped up to ~TILE_BYTES (less for a small conv: two tiles per core, down to MIN_TILE_BYTES),
    or a row split into column ranges if one row is larger (a 500-image batch). One tile for device arrays
    ``a``: a GPU builds the whole matrix at once."""
    if not backend.is_host(a) or TILE_BYTES <= 0:
        return [Tile(0, ho, 0, wo)]
    size = min(TILE_BYTES, max(MIN_TILE_BYTES, pixel_bytes * ho * wo // (2 * runtime.THREADS)))
    row_bytes = max(1, pixel_bytes * wo)
    if row_bytes <= size:
        count = -(-ho // (size // row_bytes))               # tiles of whole rows, as even as they come,
        if count > 1:                                         # as many for each core
            count = min(ho, -(-count // runtime.THREADS) * runtime.THREADS)
        return [Tile(ho * k // count, ho * (k + 1) // count - ho * k // count, 0, wo) for k in range(count)]
    pieces = min(wo, -(-row_bytes // size))
    return [Tile(y0, 1, wo * k // pieces, wo * (k + 1) // pieces) for y0 in range(ho) for k in range(pieces)]


def im2col(xpad: Array, g: ConvGeometry, tile: Tile, cols: Array) -> Array:
    """Padded (C, Hp, Wp, N) -> ``cols`` (C, kh, kw, rows, cols, N) for the output pixels of ``tile``.
    Returns cols as the (C*kh*kw, pixels*N) matrix.

    One copy per chunk of channels, from a read-only strided view of xpad whose axes are the kernel taps and
    the tile's output pixels (neighbouring taps read the same input values: the view overlaps itself, the
    copy writes each column once). The same copy as kh*kw slice copies, in one NumPy call instead of kh*kw:
    less time holding the GIL, which the cores' tile runs share."""
    c, _, _, n = xpad.shape
    sc, sh, sw, sn = xpad.strides
    taps = get_array_module(xpad).lib.stride_tricks.as_strided(      # only ever read
        xpad[:, tile.y0 * g.sh:, tile.x0 * g.sw:], shape=(c, g.kh, g.kw, tile.rows, tile.x1 - tile.x0, n),
        strides=(sc, sh * g.dh, sw * g.dw, sh * g.sh, sw * g.sw, sn))

    def fill(c0: int, c1: int) -> None:
        cols[c0:c1] = taps[c0:c1]
    runtime.by_channel(fill, cols, c)
    return cols.reshape(c * g.kh * g.kw, -1)


def cols_shape(c: int, g: ConvGeometry, tile: Tile, n: int) -> tuple[int, ...]:
    """Shape of the column buffer im2col fills for ``tile`` of a C-channel, N-sample input."""
    return (c, g.kh, g.kw, tile.rows, tile.x1 - tile.x0, n)


def col2im_add(cols: Array, xpad: Array, g: ConvGeometry, tile: Tile) -> None:
    """Add the columns (C*kh*kw, pixels*N) of ``tile``'s output pixels into padded (C, Hp, Wp, N),
    summing overlaps: the adjoint of im2col."""
    c, n = xpad.shape[0], xpad.shape[3]
    rows, width = tile.rows, tile.x1 - tile.x0
    cols = cols.reshape(c, g.kh, g.kw, rows, width, n)

    def scatter(c0: int, c1: int) -> None:
        for i in range(g.kh):
            for j in range(g.kw):
                hs, ws = g.window(i, j, rows, width, tile.y0, tile.x0)
                xpad[c0:c1, hs, ws] += cols[c0:c1, i, j]
    runtime.by_channel(scatter, cols, c)
