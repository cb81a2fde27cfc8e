"""NCCL for CuPy device arrays: one GPU per rank, the NCCL unique id sent from rank 0 over MPI.

Device arrays are reduced on the GPU by NCCL on the current stream (no host copies of gradients); host
arrays (the per-step loss and counts) go through MPI like ``MPICommunicator``. Needs CuPy built with NCCL
(the ``cupy-cuda12x`` wheels are; ``python -c "from cupy.cuda import nccl"`` tells).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import Array, get_array_module
from .comm import MPICommunicator


class NCCLCommunicator(MPICommunicator):
    """MPI_COMM_WORLD for host arrays and for setting up; an NCCL communicator for device arrays."""

    name = "nccl"

    def __init__(self) -> None:
        super().__init__()
        nccl = backend.nccl()
        self._nccl = nccl
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.int32): nccl.NCCL_INT32}
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _args(self, a: Array) -> tuple[int, int, int]:
        kind = self._types.get(np.dtype(a.dtype))
        if kind is None:
            raise TypeError(f"no NCCL reduction for dtype {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError("collectives need a contiguous array")
        return a.data.ptr, a.size, kind

    def allreduce_sum(self, a: Array) -> Array:
        if self.size == 1 or get_array_module(a) is np:
            return super().allreduce_sum(a)
        ptr, count, kind = self._args(a)
        self.nccl.allReduce(ptr, ptr, count, kind, self._nccl.NCCL_SUM, backend.current_stream_ptr())
        return a

    def broadcast(self, a: Array, root: int = 0) -> Array:
        if self.size == 1 or get_array_module(a) is np:
            return super().broadcast(a, root)
        ptr, count, kind = self._args(a)
        self.nccl.bcast(ptr, count, kind, root, backend.current_stream_ptr())
        return a

    def barrier(self) -> None:
        backend.synchronize()                                  # queued NCCL work first
        super().barrier()
