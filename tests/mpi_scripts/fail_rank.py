"""Run train_cli with a failure injected into rank 1's fourth training step (for the mpirun tests)."""
import sys

from mpi4py import MPI

from cnn_cifar.training import trainer

if MPI.COMM_WORLD.Get_rank() == 1:
    real, calls = trainer.train_step, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)
    trainer.train_step = failing

from cnn_cifar.cli.train import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
