"""Communicators: the few collective operations data-parallel training needs, behind one small interface.

* ``SingleProcess``: one rank; every operation leaves its argument as it is.
* ``MPICommunicator``: MPI through mpi4py (``mpirun``/``srun`` start the ranks). Host arrays are reduced
  in place; a device array is staged through host memory (use NCCL on GPUs).
* ``NCCLCommunicator`` (in ``nccl.py``): CuPy device arrays through NCCL, host arrays through MPI.

Every collective must be called by all ranks in the same order, with arrays of the same shape and dtype.
"""
from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import numpy as np

from ..backend import Array, get_array_module


class Communicator:
    """The interface: ``rank``/``size``, in-place ``allreduce_sum``/``allreduce_mean`` and ``broadcast`` of
    arrays, ``broadcast_object`` for small picklable values, ``barrier``, and ``abort`` (ends every rank)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0          # the rank among those on the same machine (picks the GPU)
    name: str = "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, logs and writes checkpoints."""
        return self.rank == 0

    def allreduce_sum(self, a: Array) -> Array:
        """Replace ``a`` (contiguous) by the element-wise sum over ranks; returns ``a``."""
        return a

    def allreduce_mean(self, a: Array) -> Array:
        """Replace ``a`` by the element-wise mean over ranks; returns ``a``."""
        self.allreduce_sum(a)
        if self.size > 1:
            a *= a.dtype.type(1.0 / self.size)
        return a

    def broadcast(self, a: Array, root: int = 0) -> Array:
        """Overwrite ``a`` on every rank with ``root``'s values; returns ``a``."""
        return a

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """``root``'s ``value`` (small, picklable), on every rank."""
        return value

    def barrier(self) -> None:
        """Wait until every rank has arrived."""

    def abort(self, code: int = 1) -> NoReturn:
        """End the whole job (every rank) with exit status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process, no peers: the default when not launched with ``--distributed``."""


_MPI_TYPES = {np.dtype(np.float32): "FLOAT", np.dtype(np.float64): "DOUBLE", np.dtype(np.int64): "INT64_T",
              np.dtype(np.int32): "INT32_T"}


def load_mpi():
    """mpi4py's MPI module, or a one-line error saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError("data-parallel training over MPI needs mpi4py and an MPI library: uv sync --group "
                           "distributed "
                           f"({exc})") from None
    return MPI


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD through mpi4py."""

    name = "mpi"

    def __init__(self) -> None:
        MPI = load_mpi()
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()

    def _buffer(self, a: np.ndarray) -> list:
        kind = _MPI_TYPES.get(a.dtype)
        if kind is None:
            raise TypeError(f"no MPI reduction for dtype {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError("collectives need a contiguous array")
        return [a, getattr(self._mpi, kind)]

    def allreduce_sum(self, a: Array) -> Array:
        if self.size == 1:
            return a
        if get_array_module(a) is not np:                 # a device array: through host memory
            host = a.get()
            self.allreduce_sum(host)
            a.set(host)
            return a
        self.comm.Allreduce(self._mpi.IN_PLACE, self._buffer(a), op=self._mpi.SUM)
        return a

    def broadcast(self, a: Array, root: int = 0) -> Array:
        if self.size == 1:
            return a
        if get_array_module(a) is not np:
            host = a.get()
            self.broadcast(host, root)
            a.set(host)
            return a
        self.comm.Bcast(self._buffer(a), root=root)
        return a

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.comm.bcast(value, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)                          # (Abort does not return)
