"""A communicator whose ranks are threads of the test process: DataParallel and synchronised batch norm
run in-process against the same Communicator interface MPI and NCCL implement (tests only).

Reductions add the ranks' arrays in rank order, so every rank gets the same bits, as MPI guarantees.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnn_cifar import backend
from cnn_cifar.distributed import Communicator


class _Shared:
    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: list = [None] * size


class ThreadComm(Communicator):
    """Rank ``rank`` of ``size`` threads sharing ``shared``."""

    name = "threads"

    def __init__(self, shared: _Shared, rank: int):
        self.shared, self.rank, self.size, self.local_rank = shared, rank, shared.size, rank

    def _exchange(self, a: np.ndarray) -> list[np.ndarray]:
        self.shared.slots[self.rank] = backend.to_numpy(a).copy()
        self.shared.barrier.wait()
        values = list(self.shared.slots)
        self.shared.barrier.wait()          # everyone has read before the slots are reused
        return values

    def allreduce_sum(self, a):
        values = self._exchange(a)
        total = values[0].copy()
        for v in values[1:]:
            total += v
        a[...] = backend.get_array_module(a).asarray(total)
        return a

    def broadcast(self, a, root: int = 0):
        a[...] = backend.get_array_module(a).asarray(self._exchange(a)[root])
        return a

    def broadcast_object(self, value, root: int = 0):
        self.shared.slots[self.rank] = value
        self.shared.barrier.wait()
        out = self.shared.slots[root]
        self.shared.barrier.wait()
        return out

    def barrier(self) -> None:
        self.shared.barrier.wait()

    def abort(self, code: int = 1):
        self.shared.barrier.abort()
        raise SystemExit(code)


def run_ranks(size: int, fn) -> list:
    """``fn(comm)`` on ``size`` thread ranks; their results in rank order (an exception is re-raised)."""
    shared = _Shared(size)
    with ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(fn, ThreadComm(shared, r)) for r in range(size)]
        return [f.result() for f in futures]
