#!/usr/bin/env python3
"""Throughput of our models: images/s for a training step and for inference, plus peak memory.

    uv run python benchmarks/bench_models.py                       # ours only
    uv run python benchmarks/bench_models.py --compare-torch        # ours vs PyTorch, alternating
    python3 benchmarks/bench_models.py --backend cupy --device cuda --compare-torch --amp   # mixed precision

A training step is forward + loss + backward + SGD update on random float32 data, a fresh batch every step
(made before the clock starts: no step sees data a cache could still hold from the last); inference is eval
mode without caching for backward, a fresh batch each time too. With --amp both sides train under autocast
with a GradScaler (ours: nn.autocast + optim.GradScaler; PyTorch: torch.autocast + torch.amp.GradScaler) and
infer under autocast; it is meant for GPUs (float16 on a CPU is emulated). Each (framework, model) runs in its
own subprocess so peak RSS is per run; with --compare-torch the runs alternate ours/PyTorch for --rounds rounds
and the medians and their ratio are printed. PyTorch is never a dependency of the project: point
--torch-python at an interpreter that has it (default: bench-venv/bin/python if present).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BATCH = {"cnn": 64, "resnet32": 128, "net-basic": 128, "net-dilated": 128, "cifarnet": 512, "senet": 128,
                 "airbench94": 1024}
ZOO = ("net-basic", "net-dilated", "cifarnet", "senet")


# ----------------------------------------------------------------------------------- workers
def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
        pools = [f"{p.get('internal_api')} ({p.get('architecture', '?')} kernels) {p.get('num_threads')} threads"
                 for p in threadpool_info() if p.get("user_api") == "blas"]
        return ", ".join(pools) or "unknown BLAS"
    except ImportError:
        return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def _peak_rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fresh(make, n: int):
    """An iterator over ``n`` batches made by ``make()`` now, each a different one (a fresh batch per step)."""
    return iter([make() for _ in range(n)])


def _eval_counts(warmup: int, repeats: int) -> tuple[int, int]:
    """Warm-up and timed inference batches: half the training step's counts (at least 1 and 3)."""
    return max(1, warmup // 2), max(3, repeats // 2)


def _eval_runs(warmup: int, repeats: int) -> int:
    return sum(_eval_counts(warmup, repeats))


def _time_it(fn, warmup: int, repeats: int, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker_ours(model_name: str, batch: int, eval_batch: int, warmup: int, repeats: int, backend_name: str,
                amp: bool = False) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np

    from cnn_cifar import backend, nn, runtime
    from cnn_cifar.models import build_model
    from cnn_cifar.optim import SGD, GradScaler
    from cnn_cifar.training import train_step as one_step

    backend.set_backend(backend_name)
    runtime.enable()                                  # the tuning the CLIs apply
    xp = backend.xp
    rng = np.random.default_rng(0)
    model = build_model(model_name, seed=0)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.SoftmaxCrossEntropy()
    train_batches = _fresh(lambda: (backend.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)),
                                    backend.to_device(rng.integers(0, 10, batch))), warmup + repeats)
    eval_batches = _fresh(lambda: backend.to_device(rng.standard_normal((eval_batch, 3, 32, 32)).astype(np.float32)),
                          _eval_runs(warmup, repeats))

    scaler = GradScaler(enabled=amp)

    def train_step():
        x, y = next(train_batches)
        one_step(model, crit, opt, x, y, scaler=scaler)

    def infer():
        with nn.no_grad(), nn.autocast(amp):
            model(next(eval_batches))

    model.train()
    t_train = _time_it(train_step, warmup, repeats, backend.synchronize)
    model.eval()
    t_inf = _time_it(infer, *_eval_counts(warmup, repeats), backend.synchronize)
    del xp
    gpu_mib = None
    if backend.name == "cupy":                    # what CuPy's memory pool holds after the runs
        gpu_mib = backend.xp.get_default_memory_pool().total_bytes() / 2 ** 20
    return {"framework": "ours", "backend": backend.describe() + (", amp" if amp else ""), "blas": _blas_info(),
            "train_ips": batch / t_train, "infer_ips": eval_batch / t_inf, "peak_rss_mib": _peak_rss_mib(),
            "gpu_mib": gpu_mib}


def worker_torch(model_name: str, batch: int, eval_batch: int, warmup: int, repeats: int, threads: int,
                 device: str = "cpu", amp: bool = False) -> dict:
    import torch
    import torch.nn as tnn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else tnn.Identity())

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    def resnet(depth):
        n = (depth - 2) // 6
        layers, cin = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
        for i, c in enumerate((16, 32, 64)):
            for b in range(n):
                layers.append(Block(cin, c, 2 if i > 0 and b == 0 else 1))
                cin = c
        layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.0), tnn.Linear(64, 10)]
        return tnn.Sequential(*layers)

    if model_name == "airbench94":                        # its twin (benchmarks/airbench_torch.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from airbench_torch import Airbench94
        model = Airbench94()
    elif model_name in ZOO:                               # the zoo's twins (benchmarks/torch_zoo.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from torch_zoo import build_torch
        model = build_torch(model_name)
    elif model_name == "cnn":
        model = tnn.Sequential(tnn.Conv2d(3, 8, 3), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                               tnn.Linear(1800, 128), tnn.BatchNorm1d(128), tnn.ReLU(), tnn.Dropout(0.6),
                               tnn.Linear(128, 10))
    else:
        model = resnet(int(model_name.removeprefix("resnet")))
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = tnn.CrossEntropyLoss()
    train_batches = _fresh(lambda: (torch.randn(batch, 3, 32, 32, device=device),
                                    torch.randint(0, 10, (batch,), device=device)), warmup + repeats)
    eval_batches = _fresh(lambda: torch.randn(eval_batch, 3, 32, 32, device=device), _eval_runs(warmup, repeats))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    scaler = torch.amp.GradScaler(device, enabled=amp)

    def train_step():
        x, y = next(train_batches)
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            loss = crit(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def infer():
        with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=amp):
            model(next(eval_batches))

    model.train()
    t_train = _time_it(train_step, warmup, repeats, sync)
    model.eval()
    t_inf = _time_it(infer, *_eval_counts(warmup, repeats), sync)
    where = (f"CUDA on {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}" if device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    return {"framework": "torch", "backend": f"torch {torch.__version__} {where}" + (", amp" if amp else ""),
            "blas": "cuBLAS/cuDNN" if device == "cuda" else "oneDNN/MKL (torch)", "train_ips": batch / t_train,
            "infer_ips": eval_batch / t_inf, "peak_rss_mib": _peak_rss_mib(),
            "gpu_mib": torch.cuda.max_memory_reserved() / 2 ** 20 if device == "cuda" else None}


# ----------------------------------------------------------------------------------- driver
def _run_worker(python: str, fw: str, model: str, args) -> dict:
    cmd = [python, __file__, "--worker", fw, "--models", model, "--batch", str(args.batch_for(model)),
           "--eval-batch", str(args.eval_batch), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
           "--backend", args.backend, "--threads", str(args.threads), "--device", args.device] + (
        ["--amp"] if args.amp else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark worker failed ({fw}, {model}):\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet32"])
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: each model's recipe's; "
                    "cnn 64, cifarnet 512, airbench94 1024, the others 128)")
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --compare-torch")
    ap.add_argument("--backend", default="numpy", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads")
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where PyTorch runs")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch (default: bench-venv/bin/python)")
    ap.add_argument("--amp", action="store_true", help="mixed precision on both sides (for GPUs)")
    ap.add_argument("--json", default=None, help="also write all measurements here")
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.batch_for = lambda m: args.batch or DEFAULT_BATCH.get(m, 128)

    if args.worker:
        m = args.models[0]
        fn = worker_ours if args.worker == "ours" else worker_torch
        extra = (args.backend, args.amp) if args.worker == "ours" else (args.threads, args.device, args.amp)
        res = fn(m, args.batch_for(m), args.eval_batch, args.warmup, args.repeats, *extra)
        res.update(model=m, batch=args.batch_for(m), eval_batch=args.eval_batch)
        print(json.dumps(res))
        return

    torch_python = None
    if args.compare_torch:
        cand = args.torch_python or str(ROOT / "bench-venv" / "bin" / "python")
        probe = subprocess.run([cand, "-c", "import torch"], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit(f"--compare-torch: {cand} cannot import torch (make one: see benchmarks/README.md)")
        torch_python = cand
    rounds = args.rounds if torch_python else 1
    results: list[dict] = []
    for model in args.models:
        for r in range(rounds):
            results.append(_run_worker(sys.executable, "ours", model, args))
            if torch_python:
                results.append(_run_worker(torch_python, "torch", model, args))
            print(f"  round {r + 1}/{rounds} {model}: " + ", ".join(
                f"{x['framework']} train {x['train_ips']:.0f} infer {x['infer_ips']:.0f} img/s"
                for x in results[-(2 if torch_python else 1):]), file=sys.stderr)

    first = results[0]
    print(f"{first['backend']}; BLAS: {first['blas']}; {os.cpu_count()} CPUs; "
          f"median of {args.repeats} steps after {args.warmup} warm-up, {rounds} round(s)")
    header = f"{'model':9} {'batch':>5} {'framework':9} {'train img/s':>11} {'infer img/s':>11} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for model in args.models:
        rows = {}
        for fw in ("ours", "torch"):
            rs = [x for x in results if x["model"] == model and x["framework"] == fw]
            if not rs:
                continue
            rows[fw] = {k: statistics.median(x[k] for x in rs) for k in ("train_ips", "infer_ips", "peak_rss_mib")}
            v = rows[fw]
            print(f"{model:9} {args.batch_for(model):5d} {fw:9} {v['train_ips']:11.0f} {v['infer_ips']:11.0f} "
                  f"{v['peak_rss_mib']:12.0f}")
        if "torch" in rows:
            o, t = rows["ours"], rows["torch"]
            print(f"{model:9} {'':5} {'ratio':9} {o['train_ips'] / t['train_ips']:10.2f}x "
                  f"{o['infer_ips'] / t['infer_ips']:10.2f}x {o['peak_rss_mib'] / t['peak_rss_mib']:11.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
