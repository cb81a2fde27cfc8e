"""train_cli's --distributed wiring: join the ranks mpirun/srun started, pick this rank's GPU, keep the
other ranks quiet, and split the data."""
from __future__ import annotations

import os
import sys

import numpy as np

from .. import backend
from ..distributed import Communicator, MPICommunicator, SingleProcess, connect
from . import common as C


def join(backend_choice: str) -> Communicator:
    """Before the backend is chosen: this process's rank in MPI_COMM_WORLD, its GPU (local rank), and on
    ranks other than 0 standard output silenced (errors still reach standard error)."""
    comm = MPICommunicator()
    if backend_choice in ("auto", "cupy"):
        backend.select_gpu(comm.local_rank)
    if not comm.is_main:
        sys.stdout = open(os.devnull, "w")
    C.active_comm = comm
    return comm


def communicator(distributed: bool, sync_bn: bool, batch_size: int) -> Communicator:
    """After the backend is chosen: the communicator for the run (NCCL on GPUs where CuPy has it), with
    a line saying how the global batch is split."""
    if not distributed:
        return SingleProcess()
    comm, line = connect(backend.name == "cupy")
    C.active_comm = comm
    if batch_size % comm.size:                 # the same on every rank: said once, by rank 0
        raise C.AgreedError(f"--batch-size {batch_size} does not divide evenly over {comm.size} ranks")
    print(f"{line}; global batch {batch_size} = {comm.size} x {batch_size // comm.size}"
          f"{'; batch-norm statistics synchronised' if sync_bn else ''}", flush=True)
    return comm


def test_part(n: int, comm: Communicator) -> slice:
    """This rank's contiguous part of ``n`` test images (parts differ by at most one image)."""
    bounds = np.linspace(0, n, comm.size + 1).round().astype(int)
    return slice(int(bounds[comm.rank]), int(bounds[comm.rank + 1]))
