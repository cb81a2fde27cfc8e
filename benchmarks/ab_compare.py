#!/usr/bin/env python3
"""A/B of two checkouts of the library, step by step in one process.

This machine's speed drifts by +-20% over minutes, so two separate runs cannot show a 5-10% change.
Here both versions are loaded side by side (each tree's ``src/cnn_cifar`` copied under its own package
name; the package only uses relative imports) and their steps alternate, so drift hits both alike.

    git worktree add /tmp/base HEAD~1
    uv run python benchmarks/ab_compare.py /tmp/base . --model resnet32 --batch 128 --rounds 12
    uv run python benchmarks/ab_compare.py /tmp/base . --model resnet32 --batch 500 --eval --rounds 5
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load(tree: Path, name: str, where: Path):
    """Import tree/src/cnn_cifar as package ``name``; return (nn, backend, models) modules."""
    src = tree / "src" / "cnn_cifar"
    if not (src / "__init__.py").is_file():
        sys.exit(f"error: {tree} has no src/cnn_cifar package")
    shutil.copytree(src, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tuple(importlib.import_module(f"{name}.{m}") for m in ("nn", "backend", "models"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="first checkout (e.g. the base)")
    ap.add_argument("b", type=Path, help="second checkout (e.g. the change)")
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval", action="store_true", help="time inference (eval, no_grad) instead of training")
    ap.add_argument("--rounds", type=int, default=10, help="alternating steps per version (default 10)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        steps = {}
        for label, tree in (("a", args.a), ("b", args.b)):
            nn, backend, models = load(tree.resolve(), f"cnn_cifar_{label}", Path(tmp))
            backend.set_backend("numpy")
            try:                                     # the CLIs' runtime tuning (older trees apply it at import)
                importlib.import_module(f"cnn_cifar_{label}.runtime").enable()
            except ImportError:
                pass
            model, crit = models.build_model(args.model), nn.SoftmaxCrossEntropy()
            if args.eval:
                model.eval()

            def step(model=model, crit=crit, nn=nn) -> None:
                if args.eval:
                    with nn.no_grad():
                        model(x)
                else:
                    model.zero_grad()
                    crit(model(x), y)
                    model.backward(crit.backward())
            step()                                   # warm-up: buffers, thread pools
            steps[f"{label}: {tree}"] = step
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for k, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
    what = "inference" if args.eval else "training"
    print(f"{args.model} batch {args.batch}, {what}, {args.rounds} alternating steps each")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:40s} median {args.batch / med[k]:8.0f} img/s   best {args.batch / min(v):8.0f} img/s")
    (ka, ta), (kb, tb) = med.items()
    print(f"  b/a speed ratio (medians): {ta / tb:.3f}")


if __name__ == "__main__":
    main()
