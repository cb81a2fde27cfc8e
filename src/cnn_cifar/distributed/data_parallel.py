"""Data parallelism: every rank holds a replica of the model, computes the gradients of its shard of each
global batch, and applies the same averaged update, so the replicas stay equal.

Per step (``train_step`` with ``parallel=``): one small all-reduce of (loss sum, correct, images, stop
requests), so every rank sees the global batch's loss and agrees on stopping, then one all-reduce per
gradient bucket: slices of the optimizer's flat gradient buffer when it is given (no copies), else
buckets the gradients are packed into. The float buffers (BatchNorm running statistics) ride in the last bucket
as rank 0's values (the other ranks add zeros), as PyTorch's DistributedDataParallel broadcasts rank 0's buffers:
the replicas evaluate and save identical models.
"""
from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import numpy as np

from .. import backend
from ..backend import Array
from ..nn import Module
from .comm import Communicator

if TYPE_CHECKING:
    from ..optim import Optimizer

BUCKET_BYTES = 25 * 2**20          # as DistributedDataParallel's bucket_cap_mb default


def _float_buffers(model: Module) -> list[tuple[Module, str]]:
    return [(m, key) for m in model.modules() for key, b in m._buffers.items()
            if np.dtype(b.dtype).kind == "f"]


def _stop_flags(stop_signum: int | None) -> tuple[bool, bool]:
    """A rank's stop request as two numbers to sum over ranks: asked at all, asked by SIGTERM."""
    return stop_signum is not None, stop_signum == signal.SIGTERM


def _agreed_signal(summed) -> int | None:
    """The stop all ranks agree on from the summed flags: none, SIGTERM if any rank got one, else SIGINT."""
    return None if not summed[0] else (signal.SIGTERM if summed[1] else signal.SIGINT)


class DataParallel:
    """Keeps the replicas of ``model`` in step over ``comm``; see the module docstring."""

    def __init__(self, model: Module, comm: Communicator, bucket_bytes: int = BUCKET_BYTES,
                 optimizer: "Optimizer | None" = None):
        self.model, self.comm = model, comm
        self.params = [p for p in model.parameters()]
        self.buffers = _float_buffers(model)
        # With the optimizer's flat gradient buffers (every model parameter in them) the all-reduce runs on
        # slices of those, with no packing copies; else the gradients are packed into buckets.
        self.flat_slices: list = []
        if optimizer is not None and {id(p) for p in self.params} <= {id(p) for g in optimizer.buffers
                                                                      for p in g.params}:
            for g in optimizer.buffers:
                step = max(1, bucket_bytes // g.grad.dtype.itemsize)
                self.flat_slices += [(g, slice(i, min(i + step, g.grad.size))) for i in range(0, g.grad.size, step)]
            self.params = []                      # nothing left to pack but the buffers
        self.buckets: list[list] = [[]]
        size = 0
        for p in self.params:
            nbytes = p.size * p.data.dtype.itemsize
            if self.buckets[-1] and size + nbytes > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self._flat: list[Array | None] = [None] * len(self.buckets)
        self.correct = 0            # of the last step's global batch (agree)
        self.seen = 0
        self.stop_signum: int | None = None     # a stop agreed by all ranks, and which signal asked for it

    @property
    def size(self) -> int:
        return self.comm.size

    def broadcast_state(self) -> None:
        """Give every rank rank 0's parameters and buffers (weights built from the same seed are equal
        already; this also covers --resume and --init-from, and checks nothing drifted)."""
        for p in self.model.parameters():
            self.comm.broadcast(p.data)
        for m, key in self.buffers:
            self.comm.broadcast(m._buffers[key])

    def agree(self, loss: float, correct: int, n: int, stop_signum: int | None) -> float:
        """The global batch's mean loss from each rank's shard of ``n`` images (shards are equal in size), with
        the ``correct`` predictions (counted by the caller) and the stop requests (``stop_signum``: this rank's
        pending signal) summed over ranks."""
        stats = np.array([loss * n, correct, n, *_stop_flags(stop_signum)], dtype=np.float64)
        self.comm.allreduce_sum(stats)
        self.correct, self.seen = int(stats[1]), int(stats[2])
        self.stop_signum = _agreed_signal(stats[3:])
        return float(stats[0] / stats[2])

    def agree_stop(self, stop_signum: int | None) -> int | None:
        """Outside a step: whether any rank asks to stop (``stop_signum``: this rank's pending signal), and
        with which signal (SIGTERM if any rank got one), the same answer on every rank."""
        flags = np.array(_stop_flags(stop_signum), dtype=np.float64)
        self.comm.allreduce_sum(flags)
        return _agreed_signal(flags)

    def sync_gradients(self) -> None:
        """Average the gradients over ranks (one all-reduce per bucket) and hand every rank rank 0's
        float buffers."""
        for g, sl in self.flat_slices:
            self.comm.allreduce_mean(g.grad[sl])
        last = len(self.buckets) - 1
        main = self.comm.is_main
        for i, bucket in enumerate(self.buckets):
            extra = [m._buffers[key] for m, key in self.buffers] if i == last else []
            total = sum(p.size for p in bucket) + sum(b.size for b in extra)
            if total == 0:
                continue
            ref = (bucket[0].grad if bucket else extra[0])
            flat = self._flat[i]
            if flat is None or flat.size != total:
                flat = self._flat[i] = backend.get_array_module(ref).empty(total, dtype=ref.dtype)
            off = 0
            for p in bucket:
                flat[off:off + p.size] = p.grad.reshape(-1)
                off += p.size
            n_grad = off
            for b in extra:
                flat[off:off + b.size] = b.reshape(-1) if main else 0
                off += b.size
            flat[:n_grad] *= flat.dtype.type(1.0 / self.comm.size)
            self.comm.allreduce_sum(flat)
            off = 0
            for p in bucket:
                p.grad[...] = flat[off:off + p.size].reshape(p.grad.shape)
                off += p.size
            for (m, key), b in zip(self.buffers if i == last else [], extra):
                m._buffers[key] = flat[off:off + b.size].reshape(b.shape).astype(b.dtype, copy=True)
                off += b.size
