"""Data-parallel training over MPI (mpi4py), with NCCL between GPUs: communicators behind one small
interface, and the DataParallel that keeps the replicas in step. Optional: ``uv sync --group distributed``.

Launch: ``uv run mpirun -n 2 python src/train_cli.py --model cnn --distributed`` (or ``srun``).
"""
from __future__ import annotations

from .comm import Communicator, MPICommunicator, SingleProcess
from .data_parallel import DataParallel

__all__ = ["Communicator", "DataParallel", "MPICommunicator", "SingleProcess", "connect"]


def connect(on_gpu: bool) -> tuple[Communicator, str]:
    """The communicator for a run launched by mpirun/srun: NCCL for device arrays where ``on_gpu`` and CuPy
    has NCCL, else MPI. Returns it with a line saying what was chosen."""
    comm: Communicator = MPICommunicator()
    if on_gpu:
        try:
            from .nccl import NCCLCommunicator
            comm = NCCLCommunicator()
        except Exception as exc:          # CuPy without NCCL: gradients go through host memory
            return comm, (f"distributed: {comm.size} ranks over MPI; NCCL unavailable ({type(exc).__name__}: "
                          f"{exc}), device arrays are staged through host memory")
    return comm, f"distributed: {comm.size} ranks over {comm.name.upper()}"
