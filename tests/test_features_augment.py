"""Batch augmentation added to the loader (cutout fill and probability, shift-scale-rotate, colour jitter,
mixup and cutmix), against plain-loop and by-hand references, and the loader's prefetch thread."""
from __future__ import annotations

import threading
import time

import numpy as np

from cnn_cifar.data import BatchLoader


def test_prefetch_stops_when_the_consumer_stops_after_the_last_batch_was_built():
    """The producer has built every batch and waits to hand over its end marker on a full queue; closing the
    iterator then must not hang (it did, with a blocking put of the marker)."""
    x = np.zeros((8, 3, 4, 4), np.uint8)
    loader = BatchLoader(x, np.zeros(8, np.int64), 2, (0.5,) * 3, (0.25,) * 3, prefetch=True)
    it = iter(loader)
    next(it), next(it)
    time.sleep(0.3)                              # batches 3 and 4 queued, the end marker waiting
    closer = threading.Thread(target=it.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "closing the prefetching iterator hung"
