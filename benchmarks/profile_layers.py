#!/usr/bin/env python3
"""Where a training step's (or, with --eval, an inference batch's) time goes, by layer type.

    uv run python benchmarks/profile_layers.py --model resnet32 --batch 128
    uv run python benchmarks/profile_layers.py --model resnet32 --batch 500 --eval
    uv run python benchmarks/profile_layers.py --model resnet32 --no-copies    # the multiplies' floor

``--no-copies`` replaces the host convolutions' column copies (im2col, col2im) with no-ops: the numbers are
wrong, and the time left in the convolutions is their matrix multiplies (and the loops around them).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from cnn_cifar import nn, runtime  # noqa: E402
from cnn_cifar.models import build_model  # noqa: E402
from cnn_cifar.optim import SGD  # noqa: E402
from cnn_cifar.training import train_step as one_step  # noqa: E402

LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.BatchNormReLU2d, nn.BatchNormAddReLU2d, nn.ReLU, nn.MaxPool2d,
          nn.AvgPool2d, nn.GlobalAvgPool2d, nn.Linear, nn.Flatten, nn.Dropout, nn.GELU, nn.Mul)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--eval", action="store_true", help="time inference (eval mode, no backward) instead")
    ap.add_argument("--no-copies", action="store_true",
                    help="skip the convolutions' column copies (wrong numbers; the time of the multiplies alone)")
    args = ap.parse_args()
    runtime.enable()
    if args.no_copies:
        from cnn_cifar.nn import conv_host
        conv_host.im2col = lambda xpad, geo, tile, cols: cols.reshape(cols.shape[0] * geo.taps, -1)
        conv_host.col2im_add = lambda cols, xpad, geo, tile: None
        np.seterr(all="ignore")                    # the columns are uninitialised memory
    times: dict[str, float] = defaultdict(float)
    for cls in LEAVES:
        for meth in ("forward", "backward"):
            orig = getattr(cls, meth)

            # every argument passed on (BatchNormAddReLU2d's forward takes the residual too); the wrapper's own
            # settings keyword-only, so no argument lands in them
            def timed(self, *args, _orig=orig, _key=f"{cls.__name__}.{meth}", **kwargs):
                t0 = time.perf_counter()
                out = _orig(self, *args, **kwargs)
                times[_key] += time.perf_counter() - t0
                return out
            setattr(cls, meth, timed)
    model = build_model(args.model)
    opt = SGD(model.parameters(), 0.1, 0.9, weight_decay=5e-4)
    crit = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)

    def infer():
        with nn.no_grad():
            model(x)

    sgd_step = opt.step

    def timed_step() -> None:
        t0 = time.perf_counter()
        sgd_step()
        times["SGD.step"] += time.perf_counter() - t0
    opt.step = timed_step

    def train_step():
        one_step(model, crit, opt, x, y)

    if args.eval:
        model.eval()
    step = infer if args.eval else train_step
    step()
    times.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    total = (time.perf_counter() - t0) / args.steps
    what = "inference batch" if args.eval else "training step"
    print(f"{args.model} batch {args.batch}: {total * 1000:.0f} ms per {what} ({args.batch / total:.0f} img/s)")
    for k, v in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {k:28s} {1000 * v / args.steps:8.1f} ms  {100 * v / args.steps / total:5.1f}%")
    other = total - sum(times.values()) / args.steps
    print(f"  {'other (glue)' if args.eval else 'other (loss, glue)':28s} {1000 * other:8.1f} ms  "
          f"{100 * other / total:5.1f}%")


if __name__ == "__main__":
    main()
