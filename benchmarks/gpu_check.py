#!/usr/bin/env python3
"""The one-command GPU check: everything worth knowing from a rare few minutes on a GPU, in one report that
fits one 8-minute call.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --data data --out gpu_report.md [--budget-min 8]

Its steps, in order of value, each with a time budget (scaled to --budget-min, and never past what is left of
it; a step cut short reports what it reached):
1. The environment: GPU, CuPy, CUDA, PyTorch (seconds).
2. The test suite's CuPy half under real CuPy (``pytest -k "cupy or gpu_path"``: every CuPy case, and the
   fused kernels' CUDA bodies against the host path).
3. airbench94's time to accuracy, ours on CuPy against the PyTorch twin (benchmarks/airbench_torch.py) on the
   same GPU, float32 on both sides: the full recipe, its time to result and test accuracy with and without
   TTA. (A run past its budget is stopped with SIGTERM, which saves its position.)
4. Throughput side by side: ours on CuPy against PyTorch eager with cuDNN, training and inference, with the
   GPU memory each holds (ResNet-32 and airbench94, float32).
5. airbench94's time to accuracy again under mixed precision on both sides (autocast + loss scaling).
6. ResNet-32's default recipe on the full data copy for what is left of the budget.

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


def suite(smoke: bool, budget_s: float) -> list[str]:
    # every test with a CuPy case, and the whole of test_gpu_path.py (the kernels against the host path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy or gpu_path", "-m", "not slow",
           "--continue-on-collection-errors", "tests"]
    if smoke:
        cmd[cmd.index("tests")] = "tests/test_gpu_path.py"
    t0 = time.perf_counter()
    try:
        p = sh(cmd, timeout=budget_s)
    except subprocess.TimeoutExpired:
        return [f"- `{' '.join(cmd[1:])}`: **stopped at its budget of {budget_s:.0f} s**"]
    tail = [line for line in p.stdout.strip().splitlines()[-15:] if line.strip()]
    summary = tail[-1] if tail else p.stderr.strip()[-300:]
    failed = [line for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]
    return [f"- `{' '.join(cmd[1:])}`: **{summary}** ({time.perf_counter() - t0:.0f} s)"] + \
        [f"  - {line}" for line in failed]


def throughput(smoke: bool, budget_s: float) -> list[str]:
    rows = ["| model, batch, precision | ours train img/s | torch train img/s | ratio | ours infer img/s "
            "| torch infer img/s | ratio | ours GPU MiB | torch GPU MiB |", "|---|---|---|---|---|---|---|---|---|"]
    deadline = time.perf_counter() + budget_s
    for model, batch, amp in (("resnet32", 128, False), ("airbench94", 1024, False)):
        res = {}
        for fw, extra in (("ours", ["--backend", "numpy" if smoke else "cupy"]),
                          ("torch", ["--device", "cpu" if smoke else "cuda"])):
            cmd = [sys.executable, "benchmarks/bench_models.py", "--worker", fw, "--models", model, "--batch",
                   str(8 if smoke else batch), "--eval-batch", str(16 if smoke else 500), "--warmup",
                   "1" if smoke else "5", "--repeats", "2" if smoke else "20", *extra, *(["--amp"] if amp else [])]
            left = deadline - time.perf_counter()
            if left < 5:
                return rows + [f"- {fw} {model}: not run, the step's budget of {budget_s:.0f} s was spent"]
            try:
                p = sh(cmd, timeout=left)
            except subprocess.TimeoutExpired:
                return rows + [f"- {fw} {model}: stopped at the step's budget of {budget_s:.0f} s"]
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


def _run_budgeted(cmd: list[str], budget_s: float, grace_s: float = 60) -> tuple[int, str, str, bool]:
    """Run ``cmd``; past ``budget_s`` it gets SIGTERM (our trainer finishes the step, saves and exits 143; the
    twin stops), and ``grace_s`` later a kill. Returns (exit status, stdout, stderr, whether it was cut short)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=max(budget_s, 1))
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return proc.returncode, out, err, True


def training_run(data: str, budget_s: float, smoke: bool) -> list[str]:
    out = ROOT / "runs" / "gpu_check"
    cmd = [sys.executable, "src/train_cli.py", "--model", "resnet32", "--data", data, "--no-download",
           "--checkpoint-dir", str(out), "--log-dir", str(out / "log"), "--quiet", "--backend",
           "numpy" if smoke else "cupy", "--epochs", "200"]
    if smoke:
        cmd += ["--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--model", "resnet8"]
    code, stdout, stderr, _ = _run_budgeted(cmd, budget_s, grace_s=600)
    rows = [line for line in stdout.splitlines() if re.match(r"epoch +\d+/", line)]
    name = "resnet8" if smoke else "resnet32"
    hist = out / f"{name}_history.jsonl"
    best = max((json.loads(x)["test_acc"] for x in hist.read_text().splitlines()), default=None) \
        if hist.is_file() else None
    secs = [float(m[1]) for m in (re.search(r"(\d+\.\d)s", r) for r in rows) if m]
    return [f"- `{' '.join(cmd[1:])}` for {budget_s:.0f} s: exit {code}, {len(rows)} epochs, "
            f"best test accuracy {'-' if best is None else f'{100 * best:.2f}%'}, "
            f"{(sum(secs) / len(secs)) if secs else float('nan'):.1f} s per epoch",
            f"- last line: `{(stderr.strip().splitlines() or [''])[-1][:300]}`"] + [f"  - {r}" for r in rows[-3:]]


def airbench(data: str, budget_s: float, smoke: bool, amp: bool) -> list[str]:
    """airbench94's recipe, ours and the twin's, on the same device and data: time to result and accuracy."""
    out = ROOT / "runs" / ("gpu_check_airbench_amp" if amp else "gpu_check_airbench")
    small = ["--limit-train", "2048", "--limit-test", "512", "--batch-size", "256", "--epochs", "1.5"] if smoke else []
    ours = [sys.executable, "src/train_cli.py", "--model", "airbench94", "--data", data, "--no-download",
            "--checkpoint-dir", str(out), "--log-dir", str(out / "log"), "--quiet", "--backend",
            "numpy" if smoke else "cupy", *(["--amp"] if amp else []), *small]
    twin = [sys.executable, "benchmarks/airbench_torch.py", "--data", data, "--device", "cpu" if smoke else "cuda",
            "--json", str(out / "twin.json"), *(["--amp"] if amp and not smoke else []), *small]  # (CPU float16: slow)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_end = time.perf_counter() + budget_s
    for name, cmd, share in (("ours", ours, 0.75), ("PyTorch twin", twin, 1.0)):
        left = t_end - time.perf_counter()
        code, stdout, stderr, cut = _run_budgeted(cmd, left * share)
        keep = [line for line in stdout.splitlines() if line.startswith(("final weights", "time to result",
                                                                         "test accuracy", "done:"))]
        epochs = [line for line in stdout.splitlines() if re.match(r"epoch +\d+", line)]
        rows.append(f"- {name}: `{' '.join(cmd[1:])}`: exit {code}" + (" (stopped at its budget)" if cut else "")
                    + f", {len(epochs)} epoch lines")
        rows += [f"  - {line}" for line in (keep or epochs[-2:])]
        if code not in (0, 143):
            rows.append(f"  - last line: `{(stderr.strip().splitlines() or [''])[-1][:300]}`")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="folder holding cifar-10-batches-py")
    ap.add_argument("--out", default="gpu_report.md")
    ap.add_argument("--budget-min", type=float, default=8.0, help="minutes for the whole check")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["suite", "airbench", "throughput", "airbench-amp", "training"])
    ap.add_argument("--smoke", action="store_true", help="CPU only, tiny sizes: checks this script")
    args = ap.parse_args()
    report = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", "## Environment",
              *environment(args.smoke)]
    deadline = time.perf_counter() + 60 * args.budget_min - 20          # 20 s to write the report
    # (title, key, what runs it given its seconds, its share of an 8-minute check)
    steps = (("Test suite, CuPy half", "suite", lambda s: suite(args.smoke, s), 100),
             ("airbench94 time to accuracy, float32, against the PyTorch twin", "airbench",
              lambda s: airbench(args.data, s, args.smoke, amp=False), 150),
             ("Throughput against PyTorch on the same device", "throughput", lambda s: throughput(args.smoke, s), 70),
             ("airbench94 time to accuracy, mixed precision, against the PyTorch twin", "airbench-amp",
              lambda s: airbench(args.data, s, args.smoke, amp=True), 90),
             ("ResNet-32 training for what is left", "training",
              lambda s: training_run(args.data, s, args.smoke), 40))
    scale = args.budget_min / 8.0
    for title, key, fn, share_s in steps:
        if key in args.skip:
            continue
        budget = min(share_s * scale, deadline - time.perf_counter()) if key != "training" else \
            deadline - time.perf_counter()
        if budget < 10:
            report += ["", f"## {title}", "- not run: the check's budget was spent"]
            continue
        print(f"gpu_check: {title} ({budget:.0f} s) ...", flush=True)
        try:
            report += ["", f"## {title}", *fn(budget)]
        except Exception as exc:                        # a failing part must not lose the others
            report += ["", f"## {title}", f"- failed: {type(exc).__name__}: {exc}"]
        Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
