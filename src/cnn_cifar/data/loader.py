"""Batches for training and evaluation, optionally prepared in a background thread."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import backend
from ..backend import Array
from . import augment


@dataclass
class AugmentConfig:
    """What the training loader does to each batch before normalisation."""
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(crop_padding=0, flip=False, cutout=0)


class BatchLoader:
    """Yields (x, y) batches on the active backend: x float32 (B, 3, H, W) normalised, y int64.

    With ``shuffle`` the order is a fresh permutation each epoch from ``rng``; augmentation draws from
    the same generator, so the stream is fixed by its seed (and resumable from its saved state).
    With ``prefetch`` the next batch is built in a background thread while the model computes.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], shuffle: bool = False, augment_cfg: AugmentConfig | None = None,
                 rng: np.random.Generator | None = None, drop_last: bool = False, prefetch: bool = True):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.mean, self.std = mean, std
        self.shuffle, self.augment_cfg = shuffle, augment_cfg or AugmentConfig.none()
        self.rng = rng if rng is not None else np.random.default_rng()
        self.drop_last, self.prefetch = drop_last, prefetch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

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
            if cfg.flip:
                xb = augment.random_flip(xb, self.rng)
            xf = augment.normalize(xb, self.mean, self.std)
            if cfg.cutout:
                augment.cutout(xf, cfg.cutout, self.rng)
            yield xf, yb

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        if not self.prefetch:
            for xb, yb in self._host_batches():
                yield backend.to_device(xb), backend.to_device(yb)
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
                yield backend.to_device(xb), backend.to_device(yb)
        finally:
            stop.set()
            t.join()
