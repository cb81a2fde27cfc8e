#!/usr/bin/env python3
"""The one-command GPU check: everything worth knowing from a rare hour on a GPU, in one report.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --data data --out gpu_report.md [--budget-min 10]

1. The environment: GPU, CuPy, CUDA, PyTorch.
2. The test suite's CuPy half under real CuPy (``pytest -k "cupy or gpu_path"``: every CuPy case, and the
   fused kernels' CUDA bodies against the host path).
3. Throughput side by side: ours on CuPy against PyTorch eager with cuDNN on the same GPU, same models,
   batches and dtype (float32, then mixed precision: autocast + GradScaler on both sides), training and
   inference, with the GPU memory each holds.
4. A ResNet-32 training run of the default recipe on the full data copy for a fixed time budget (stopped
   with SIGTERM, which saves the position), with its epochs and best test accuracy.

It needs only what a GPU machine's python3 has (CuPy, NumPy, tqdm, pytest, PyTorch); nothing is installed.
``--smoke`` runs every step on the CPU with tiny sizes (NumPy for ours, PyTorch on CPU), to check the
script itself where no GPU is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {})))


def environment(smoke: bool) -> list[str]:
    lines = [f"- python {platform.python_version()}, {platform.platform()}"]
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"- CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
                     f"GPU 0: {name}, {props['totalGlobalMem'] / 2 ** 30:.1f} GiB")
    except Exception as exc:
        lines.append(f"- CuPy: not usable ({type(exc).__name__}: {exc})" + (" (smoke run)" if smoke else ""))
    try:
        import torch
        lines.append(f"- PyTorch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, cuDNN "
                     f"{torch.backends.cudnn.version() if torch.cuda.is_available() else '-'}")
    except Exception as exc:
        lines.append(f"- PyTorch: not importable ({exc})")
    return lines


def suite(smoke: bool) -> list[str]:
    # every test with a CuPy case, and the whole of test_gpu_path.py (the kernels against the host path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy or gpu_path", "-m", "not slow",
           "--continue-on-collection-errors", "tests"]
    if smoke:
        cmd[cmd.index("tests")] = "tests/test_gpu_path.py"
    t0 = time.perf_counter()
    p = sh(cmd, timeout=3600)
    tail = [line for line in p.stdout.strip().splitlines()[-15:] if line.strip()]
    summary = tail[-1] if tail else p.stderr.strip()[-300:]
    failed = [line for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]
    return [f"- `{' '.join(cmd[1:])}`: **{summary}** ({time.perf_counter() - t0:.0f} s)"] + \
        [f"  - {line}" for line in failed]


def throughput(smoke: bool) -> list[str]:
    rows = ["| model, batch, precision | ours train img/s | torch train img/s | ratio | ours infer img/s "
            "| torch infer img/s | ratio | ours GPU MiB | torch GPU MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for model, batch, amp in (("cnn", 64, False), ("resnet32", 128, False), ("resnet32", 128, True)):
        res = {}
        for fw, extra in (("ours", ["--backend", "numpy" if smoke else "cupy"]),
                          ("torch", ["--device", "cpu" if smoke else "cuda"])):
            cmd = [sys.executable, "benchmarks/bench_models.py", "--worker", fw, "--models", model, "--batch",
                   str(8 if smoke else batch), "--eval-batch", str(16 if smoke else 500), "--warmup",
                   "1" if smoke else "5", "--repeats", "2" if smoke else "20", *extra, *(["--amp"] if amp else [])]
            p = sh(cmd, timeout=1800)
            if p.returncode:
                return rows + [f"- {fw} {model} failed: `{p.stderr.strip()[-500:]}`"]
            res[fw] = json.loads(p.stdout.strip().splitlines()[-1])
        o, t = res["ours"], res["torch"]

        def mib(v):
            return "-" if v is None else f"{v:,.0f}"
        rows.append(f"| {model}, {o['batch']}, {'amp' if amp else 'float32'} | {o['train_ips']:,.0f} | "
                    f"{t['train_ips']:,.0f} | {o['train_ips'] / t['train_ips']:.2f}x | {o['infer_ips']:,.0f} | "
                    f"{t['infer_ips']:,.0f} | {o['infer_ips'] / t['infer_ips']:.2f}x | {mib(o.get('gpu_mib'))} | "
                    f"{mib(t.get('gpu_mib'))} |")
        rows.append(f"<!-- {model}: ours {o['backend']}; torch {t['backend']} -->")
    return rows


def training_run(data: str, budget_min: float, smoke: bool) -> list[str]:
    out = ROOT / "runs" / "gpu_check"
    cmd = [sys.executable, "src/train_cli.py", "--model", "resnet32", "--data", data, "--no-download",
           "--checkpoint-dir", str(out), "--log-dir", str(out / "log"), "--quiet", "--backend",
           "numpy" if smoke else "cupy", "--epochs", "200"]
    if smoke:
        cmd += ["--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--model", "resnet8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=budget_min * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)                 # finish the step, save, exit 143
        stdout, stderr = proc.communicate(timeout=600)
    rows = [line for line in stdout.splitlines() if re.match(r"epoch +\d+/", line)]
    name = "resnet8" if smoke else "resnet32"
    hist = out / f"{name}_history.jsonl"
    best = max((json.loads(x)["test_acc"] for x in hist.read_text().splitlines()), default=None) \
        if hist.is_file() else None
    secs = [float(m[1]) for m in (re.search(r"(\d+\.\d)s", r) for r in rows) if m]
    return [f"- `{' '.join(cmd[1:])}` for {budget_min:g} min: exit {proc.returncode}, {len(rows)} epochs, "
            f"best test accuracy {'-' if best is None else f'{100 * best:.2f}%'}, "
            f"{(sum(secs) / len(secs)) if secs else float('nan'):.1f} s per epoch",
            f"- last line: `{(stderr.strip().splitlines() or [''])[-1][:300]}`"] + [f"  - {r}" for r in rows[-3:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="folder holding cifar-10-batches-py")
    ap.add_argument("--out", default="gpu_report.md")
    ap.add_argument("--budget-min", type=float, default=10.0, help="minutes of ResNet-32 training")
    ap.add_argument("--skip", nargs="*", default=[], choices=["suite", "throughput", "training"])
    ap.add_argument("--smoke", action="store_true", help="CPU only, tiny sizes: checks this script")
    args = ap.parse_args()
    report = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", "## Environment",
              *environment(args.smoke)]
    for title, key, fn in (("Test suite, CuPy half", "suite", lambda: suite(args.smoke)),
                           ("Throughput against PyTorch on the same device", "throughput",
                            lambda: throughput(args.smoke)),
                           ("ResNet-32 training for a fixed time", "training",
                            lambda: training_run(args.data, args.budget_min, args.smoke))):
        if key in args.skip:
            continue
        print(f"gpu_check: {title} ...", flush=True)
        try:
            report += ["", f"## {title}", *fn()]
        except Exception as exc:                        # a failing part must not lose the others
            report += ["", f"## {title}", f"- failed: {type(exc).__name__}: {exc}"]
        Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
