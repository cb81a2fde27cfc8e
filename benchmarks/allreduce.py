#!/usr/bin/env python3
"""What data parallelism costs per step: the gradient all-reduce of each model beside its training step.

    uv run mpirun -n 2 python benchmarks/allreduce.py                  # NumPy ranks over MPI
    uv run mpirun -n 2 python benchmarks/allreduce.py --backend cupy   # one GPU per rank, NCCL

For SimpleCNN and ResNet-32 at their default global batch (split over the ranks) it times, per rank, a
whole data-parallel training step (forward, the agreed loss, backward, gradient all-reduce, update) and
the all-reduce alone (DataParallel.sync_gradients: the gradients in place on the optimizer's flat
buffer, the batch-norm statistics packed),
and prints medians with the bytes a ring all-reduce moves per rank, 2(N-1)/N x gradient bytes. Set
CNN_CIFAR_THREADS and OMP_NUM_THREADS so that the ranks do not share cores (1 each on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnn_cifar import backend, nn  # noqa: E402
from cnn_cifar.distributed import DataParallel, connect  # noqa: E402
from cnn_cifar.distributed.comm import MPICommunicator  # noqa: E402
from cnn_cifar.models import build_model, recipe  # noqa: E402
from cnn_cifar.optim import SGD  # noqa: E402
from cnn_cifar.training import train_step  # noqa: E402


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--models", nargs="+", default=["cnn", "resnet32"])
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model [10]")
    p.add_argument("--syncs", type=int, default=50, help="timed all-reduces alone per model [50]")
    args = p.parse_args()
    if args.backend == "cupy":
        backend.select_gpu(MPICommunicator().local_rank)
    backend.set_backend(args.backend)
    comm, line = connect(backend.name == "cupy")
    rows = []
    for name in args.models:
        model = build_model(name, seed=0)
        opt = SGD(list(model.parameters()), lr=0.01, momentum=0.9)
        par = DataParallel(model, comm, optimizer=opt)        # as train_cli: all-reduce on the flat buffer
        par.broadcast_state()
        batch = recipe(name).batch_size
        if batch % comm.size:
            raise SystemExit(f"the global batch {batch} of {name} does not divide over {comm.size} ranks")
        rng = np.random.default_rng(comm.rank)
        x = backend.to_device(rng.standard_normal((batch // comm.size, 3, 32, 32)).astype(np.float32))
        y = backend.to_device(rng.integers(0, 10, batch // comm.size))
        crit = nn.SoftmaxCrossEntropy()

        def step():
            train_step(model, crit, opt, x, y, parallel=par)
        _timed(step, 2)                                          # warm-up (buffers, caches)
        step_s = statistics.median(_timed(step, args.steps))
        sync_s = statistics.median(_timed(par.sync_gradients, args.syncs))
        grad_bytes = sum(q.size * q.data.dtype.itemsize for q in model.parameters())
        ring = 2 * (comm.size - 1) / comm.size * grad_bytes
        rows.append((name, model.num_parameters(), batch, step_s, sync_s, ring))
    if comm.is_main:
        print(f"{line}; {backend.describe()}")
        print(f"{'model':<9} {'params':>9} {'global batch':>12} {'step ms':>8} {'all-reduce ms':>13} "
              f"{'share':>6} {'ring MB/rank':>12}")
        for name, n, batch, step_s, sync_s, ring in rows:
            print(f"{name:<9} {n:>9,} {batch:>12} {1e3 * step_s:>8.1f} {1e3 * sync_s:>13.2f} "
                  f"{100 * sync_s / step_s:>5.1f}% {ring / 1e6:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
