"""Batches for training and evaluation, optionally prepared in a background thread."""
from __future__ import annotations

import copy
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import backend
from ..backend import Array
from ..errors import SettingError
from . import augment

CUTOUT_FILLS = ("mean", "zero")
SSR_BORDERS = ("reflect", "constant")


@dataclass
class AugmentConfig:
    """What the training loader does to each batch, in this order: random crop (or, with ``translate``, a
    reflect-padded translation), horizontal flip (at random per batch, or ``alternating_flip``: each image
    flipped on alternate epochs, half of them from the first, as the fast CIFAR recipes do),
    shift-scale-rotate (with probability ``ssr_p`` per image), colour jitter, normalisation, cutout (with
    probability ``cutout_p``, filled with the dataset mean or black), then mixup or cutmix (both set: one of
    them per batch, with probability 1/2 each, as timm's Mixup)."""
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    cutout_fill: str = "mean"
    cutout_p: float = 1.0
    shift_scale_rotate: tuple[float, float, float] | None = None    # shift, scale, degrees
    ssr_p: float = 0.5
    ssr_border: str = "reflect"
    color_jitter: tuple[float, float, float, float] | None = None    # brightness, contrast, saturation, hue
    mixup: float = 0.0
    cutmix: float = 0.0
    translate: int = 0                   # random translation by up to this many pixels, reflect-padded
    alternating_flip: bool = False       # flip half the images (fixed) on even epochs, the other half on odd

    def __post_init__(self) -> None:
        if self.translate < 0 or (self.translate and self.crop_padding):
            raise SettingError("translate (reflect-padded) and crop_padding (zero-padded) are two ways to shift "
                               "the images: give one, >= 0", "translate", "crop_padding")
        if self.alternating_flip and not self.flip:
            raise SettingError("alternating_flip needs flip", "alternating_flip")
        if self.cutout_fill not in CUTOUT_FILLS:
            raise SettingError(f"cutout_fill must be one of {', '.join(CUTOUT_FILLS)}, got {self.cutout_fill!r}",
                               "cutout_fill")
        if self.ssr_border not in SSR_BORDERS:
            raise SettingError(f"ssr_border must be one of {', '.join(SSR_BORDERS)}, got {self.ssr_border!r}",
                               "ssr_border")
        for name in ("cutout_p", "ssr_p"):
            if not 0 < getattr(self, name) <= 1:
                raise SettingError(f"{name} must be in (0, 1], got {getattr(self, name)}", name)
        if self.shift_scale_rotate is not None:
            shift, scale, degrees = self.shift_scale_rotate
            if not (0 <= shift <= 1 and 0 <= scale < 1 and 0 <= degrees <= 180):
                raise SettingError("shift_scale_rotate needs 0 <= shift <= 1, 0 <= scale < 1 and 0 <= degrees <= "
                                   f"180, got {shift:g} {scale:g} {degrees:g}", "shift_scale_rotate")
        if self.color_jitter is not None:
            if min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
                raise SettingError("color_jitter needs brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5, "
                                   "got " + " ".join(f"{v:g}" for v in self.color_jitter), "color_jitter")
        if self.mixup < 0 or self.cutmix < 0:
            raise SettingError("mixup and cutmix take an alpha >= 0 (0 = off)", "mixup", "cutmix")

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(crop_padding=0, flip=False, cutout=0)

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


def _labels_to_device(y: np.ndarray | augment.MixedTargets) -> Array | augment.MixedTargets:
    if isinstance(y, augment.MixedTargets):
        return augment.MixedTargets(backend.to_device(y.y_a), backend.to_device(y.y_b), y.lam)
    return backend.to_device(y)


def _shard(xb: np.ndarray, yb, rank: int, size: int):
    """Rank ``rank``'s contiguous 1/size of a batch (and of its labels, mixed or not)."""
    k = len(xb) // size
    sl = slice(rank * k, (rank + 1) * k)
    if isinstance(yb, augment.MixedTargets):
        return xb[sl], augment.MixedTargets(yb.y_a[sl], yb.y_b[sl], yb.lam)
    return xb[sl], yb[sl]


class BatchLoader:
    """Yields (x, y) batches on the active backend: x float32 (B, 3, H, W) normalised, y int64 (with mixup
    or cutmix, an ``augment.MixedTargets`` of two label arrays and the mixing weight).

    With ``shuffle`` the order is a fresh permutation each epoch from ``rng``; augmentation draws from
    the same generator, so the stream is fixed by its seed (and resumable from its saved state).
    With ``prefetch`` the next batch is built in a background thread while the model computes.

    With ``shard=(rank, size)`` (data-parallel training) every rank draws and augments the same global
    batch from the same stream and keeps its own contiguous 1/size of it: the data seen by all ranks
    together, and the stream's state, are those of a one-process run, so a run resumes exactly with any
    number of ranks. (Host-side augmentation of the whole batch is repeated on each rank; it is cheap
    beside the model's step.)
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], shuffle: bool = False, augment_cfg: AugmentConfig | None = None,
                 rng: np.random.Generator | None = None, drop_last: bool = False, prefetch: bool = True,
                 shard: tuple[int, int] | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.mean, self.std = mean, std
        self.shuffle, self.augment_cfg = shuffle, augment_cfg or AugmentConfig.none()
        self.rng = rng if rng is not None else np.random.default_rng()
        self.epoch = 0                       # set by the training loop before each epoch (``set_epoch``)
        # alternating_flip: which images start flipped, drawn from a copy of the stream as given (the stream
        # itself is not advanced), so a run and its resume from any epoch agree.
        self._flipped_first = (copy.deepcopy(self.rng).random(len(x)) < 0.5
                               if self.augment_cfg.alternating_flip else None)
        self.drop_last, self.prefetch = drop_last, prefetch
        if shard is not None:
            rank, size = shard
            if not 0 <= rank < size:
                raise ValueError(f"shard rank {rank} is not in [0, {size})")
            if not drop_last or batch_size % size:
                raise ValueError(f"the global batch size {batch_size} must divide evenly over {size} ranks "
                                 f"(and the last partial batch be dropped)")
        self.shard = shard if shard is not None and shard[1] > 1 else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass is (0-based): what alternates by epoch follows it (as PyTorch's
        ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def _black(self) -> np.ndarray:
        """A black pixel, normalised: the cutout fill ``zero``."""
        return -np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)

    def _host_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else None
        cfg = self.augment_cfg
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else sl
            xb, yb = self.x[idx], self.y[idx]
            if cfg.crop_padding:
                xb = augment.random_crop(xb, cfg.crop_padding, self.rng)
            if cfg.translate:
                xb = augment.random_crop(xb, cfg.translate, self.rng, mode="reflect")
            if cfg.alternating_flip:
                flip = self._flipped_first[idx] ^ bool(self.epoch % 2)
                xb = np.where(flip[:, None, None, None], xb[:, :, :, ::-1], xb)
            elif cfg.flip:
                xb = augment.random_flip(xb, self.rng)
            if cfg.shift_scale_rotate or cfg.color_jitter:
                xb = xb.astype(np.float32)
                if cfg.shift_scale_rotate:
                    augment.shift_scale_rotate(xb, *cfg.shift_scale_rotate, cfg.ssr_p, self.rng, cfg.ssr_border)
                if cfg.color_jitter:
                    augment.color_jitter(xb, cfg.color_jitter, self.rng)
            xf = augment.normalize(xb, self.mean, self.std)
            if cfg.cutout:
                augment.cutout(xf, cfg.cutout, self.rng, fill=self._black if cfg.cutout_fill == "zero" else None,
                               p=cfg.cutout_p)
            if cfg.mixes:
                use_cutmix = cfg.cutmix and (not cfg.mixup or self.rng.random() < 0.5)
                xf, yb = (augment.cutmix(xf, yb, cfg.cutmix, self.rng) if use_cutmix
                          else augment.mixup(xf, yb, cfg.mixup, self.rng))
            if self.shard is not None:
                xf, yb = _shard(xf, yb, *self.shard)
            yield xf, yb

    def __iter__(self) -> Iterator[tuple[Array, Array | augment.MixedTargets]]:
        if not self.prefetch:
            for xb, yb in self._host_batches():
                yield backend.to_device(xb), _labels_to_device(yb)
            return
        yield from self._threaded()

    def _threaded(self) -> Iterator[tuple[Array, Array]]:
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            """Hand ``item`` to the consumer unless it has stopped listening (then False)."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self._host_batches():
                    if not put(item):
                        return
                put(done)         # (a blocking put here would hang a consumer that stopped early)
            except BaseException as exc:  # surfaced in the consumer
                put(exc)

        t = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                xb, yb = item
                yield backend.to_device(xb), _labels_to_device(yb)
        finally:
            stop.set()
            t.join()
