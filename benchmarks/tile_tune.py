#!/usr/bin/env python3
"""The im2col column tile's default size (``im2col.TILE_BYTES``, ``CNN_CIFAR_TILE_BYTES``), measured.

A convolution builds its column matrix one tile of output pixels at a time and multiplies it while it is in
cache; how large a tile pays depends on the machine's caches and on the BLAS build. This times whole steps
of a model (a fresh batch each step) with each candidate size in turn, the sizes alternating step by step in
one process so that the machine's drift hits all alike, and prints the median images per second of each.

    uv run python benchmarks/tile_tune.py --model resnet32 --batch 128 --sizes 2M 4M 8M 12M 16M
    uv run python benchmarks/tile_tune.py --model resnet32 --batch 256 --eval
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from cnn_cifar import nn, runtime  # noqa: E402
from cnn_cifar.models import build_model  # noqa: E402
from cnn_cifar.nn import im2col  # noqa: E402
from cnn_cifar.optim import SGD  # noqa: E402
from cnn_cifar.training import train_step  # noqa: E402


def size(text: str) -> int:
    """'8M', '512K' or a number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval", action="store_true", help="time inference (eval, no_grad) instead of training")
    ap.add_argument("--sizes", nargs="+", type=size, default=[size(s) for s in ("2M", "4M", "8M", "12M", "16M")])
    ap.add_argument("--rounds", type=int, default=8, help="steps per size, alternating (default 8)")
    args = ap.parse_args()
    runtime.enable()
    model, crit = build_model(args.model), nn.SoftmaxCrossEntropy()
    opt = SGD(model.parameters(), 0.1, 0.9, weight_decay=5e-4)
    model.train(not args.eval)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, args.batch)

    def step() -> None:
        x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
        if args.eval:
            with nn.no_grad():
                model(x)
        else:
            train_step(model, crit, opt, x, y)              # the protocol's step: the SGD update included

    times: dict[int, list[float]] = {s: [] for s in args.sizes}
    for s in args.sizes:                                 # warm-up: each size's buffers
        im2col.TILE_BYTES = s
        step()
    for _ in range(args.rounds):
        for s in args.sizes:
            im2col.TILE_BYTES = s
            t0 = time.perf_counter()
            step()
            times[s].append(time.perf_counter() - t0)
    what = "inference" if args.eval else "training"
    print(f"{args.model} batch {args.batch}, {what}, {args.rounds} alternating steps per tile size")
    for s, v in times.items():
        print(f"  {s >> 10:>8} KiB  median {args.batch / float(np.median(v)):7.0f} img/s")


if __name__ == "__main__":
    main()
