#!/usr/bin/env python3
"""Where Conv2d's Winograd path beats im2col on this machine: the measurement behind its defaults.

Times one 3x3 stride-1 convolution (forward, then forward + backward with the input gradient) on both host
paths, alternated in one process, float32, at each case's channels, map size and batch, and prints the
ratio and whether the default rule (``conv_winograd.applies``) takes Winograd. With ``--block-bytes`` it
compares block sizes for the Winograd path instead.

    uv run python benchmarks/winograd_tune.py                        # the default cases
    uv run python benchmarks/winograd_tune.py --cases 64,256,15,1024 256,256,7,1024 --block-bytes 4M 8M 16M

A case is ``in,out,size,batch``. The defaults cover airbench94's layers (batch 1024) and ResNet-32's
stages (batch 128), and the batch and channel counts around the rule's thresholds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cnn_cifar import runtime  # noqa: E402
from cnn_cifar.nn import conv_host, conv_winograd  # noqa: E402
from cnn_cifar.nn.im2col import ConvGeometry  # noqa: E402

DEFAULT_CASES = ["24,64,31,1024", "64,64,15,1024", "64,256,15,1024", "256,256,7,1024", "256,256,3,1024",
                 "16,16,32,1024", "256,256,7,256", "256,256,7,512", "64,64,8,512",
                 "16,16,32,128", "32,32,16,128", "64,64,8,128"]


def _bytes(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def time_case(path, x, w, dy, geo) -> tuple[float, float]:
    """One forward, and one forward + backward with the input gradient, in seconds."""
    ho, wo = dy.shape[1:3]
    t0 = time.perf_counter()
    path.forward(x, w, geo, 1, ho, wo)
    t1 = time.perf_counter()
    path.backward(x, w, dy, geo, 1, np.zeros_like(w), True)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="in,out,size,batch ...")
    ap.add_argument("--repeats", type=int, default=5, help="alternated repeats per path (the first is dropped)")
    ap.add_argument("--block-bytes", nargs="+", type=_bytes, help="compare these Winograd block sizes instead")
    args = ap.parse_args()
    runtime.enable()
    rng = np.random.default_rng(0)
    geo = ConvGeometry(3, 3, 1, 1, 1, 1)
    variants = ([(f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB", b) for b in args.block_bytes]
                if args.block_bytes else [("im2col", None), ("winograd", conv_winograd.BLOCK_BYTES)])
    print(f"{runtime.THREADS} threads, float32; ms per call, median of {args.repeats - 1} (forward | forward+backward)")
    print(f"{'case (in,out,size,batch)':26}" + "".join(f"{name:>22}" for name, _ in variants)
          + f"{'ratio':>14}{'saving':>8}{'coverage':>10}{'default':>9}")
    for case in args.cases:
        c, o, s, n = (int(v) for v in case.split(","))
        x = rng.standard_normal((c, s, s, n), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
        dy = rng.standard_normal((o, s, s, n), dtype=np.float32)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
        for _ in range(args.repeats):
            for name, block in variants:
                if block is None:
                    times[name].append(time_case(conv_host, x, w, dy, geo))
                else:
                    conv_winograd.BLOCK_BYTES = block
                    times[name].append(time_case(conv_winograd, x, w, dy, geo))
        med = {k: (statistics.median(t[0] for t in v[1:]) * 1e3, statistics.median(t[1] for t in v[1:]) * 1e3)
               for k, v in times.items()}
        first, last = med[variants[0][0]], med[variants[-1][0]]
        row = f"{case:26}" + "".join(f"{f:>10.1f} | {b:>9.1f}" for f, b in med.values())
        takes = conv_winograd.applies(geo, 1, c, o, x)
        print(row + f"{first[1] / last[1]:>13.2f}x{conv_winograd.saving(s, s):>8.2f}"
              f"{conv_winograd.coverage(s, s):>10.2f}{'yes' if takes else 'no':>9}")
    print("ratio: the first column's forward+backward time over the last's (above 1: the last is faster)")


if __name__ == "__main__":
    main()
