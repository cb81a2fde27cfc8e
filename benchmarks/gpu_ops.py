#!/usr/bin/env python3
"""Device operations and host synchronisations of one ResNet-32 training step (batch 128) and of one
evaluation batch, on the CuPy backend: counted by the CuPy stand-in in tests/standin when no GPU is
here (or when --standin is given).

    uv run python benchmarks/gpu_ops.py [--model resnet32] [--batch 128]

Each CuPy call launches at least one kernel, and on a fast GPU the ~10 us of Python and launch overhead per
operation, not the arithmetic, bounds small-batch training: this count is the budget to bring down.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def count(model_name: str = "resnet32", batch: int = 128, eval_batch: int = 500) -> dict:
    """{'train': (ops, syncs), 'eval': (ops, syncs)} for one step after a warm-up step."""
    sys.path.insert(0, str(ROOT / "tests" / "standin"))
    sys.path.insert(0, str(ROOT / "src"))
    import cupy
    if not getattr(cupy, "IS_STANDIN", False):
        raise SystemExit("a real CuPy was imported: run on a machine without one, or use benchmarks/gpu_check.py")
    from cnn_cifar import backend, nn
    from cnn_cifar.models import build_model
    from cnn_cifar.optim import SGD
    from cnn_cifar.training import train_step
    backend.set_backend("cupy")
    rng = np.random.default_rng(0)
    model = build_model(model_name, seed=0)
    opt = SGD(model.parameters(), 0.1, 0.9, nesterov=True, weight_decay=5e-4)
    crit = nn.SoftmaxCrossEntropy()
    x = backend.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = backend.to_device(rng.integers(0, 10, batch))
    xe = backend.to_device(rng.standard_normal((eval_batch, 3, 32, 32)).astype(np.float32))
    model.train()
    train_step(model, crit, opt, x, y, defer=True)       # as the Trainer runs a step on a GPU
    cupy.reset_counters()
    train_step(model, crit, opt, x, y, defer=True)
    out = {"train": (cupy.counters["ops"], cupy.counters["syncs"])}
    model.eval()
    with nn.no_grad():
        model(xe)
        cupy.reset_counters()
        model(xe)
    out["eval"] = (cupy.counters["ops"], cupy.counters["syncs"])
    backend.set_backend("numpy")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    c = count(args.model, args.batch)
    print(f"{args.model}, batch {args.batch}, CuPy stand-in")
    print(f"ops per train step: {c['train'][0]}; syncs per train step: {c['train'][1]}")
    print(f"ops per eval batch: {c['eval'][0]}; syncs per eval batch: {c['eval'][1]}")


if __name__ == "__main__":
    main()
