"""visualize_cli: PNG plots and a text summary from a run's history and (optionally) its evaluation."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..training import evaluate_checkpoint
from ..viz import plot_comparison, plot_evaluation, plot_runs, plot_training_progress, read_history, write_summary
from . import common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visualize_cli.py", description="Plot training curves and evaluation results.")
    p.add_argument("--history", nargs="+", metavar="PATH", default=None,
                   help="history CSV/JSONL file(s); several are overlaid for comparison")
    p.add_argument("--labels", nargs="+", default=None, help="one label per --history file")
    p.add_argument("--run-dir", default=None, help="folder holding <model>_history.csv (e.g. checkpoint/)")
    p.add_argument("--model", default=None, help="model name for titles and file names [from the history file]")
    p.add_argument("--checkpoint", default=None, help="evaluate this checkpoint and plot per-class/confusion")
    p.add_argument("--eval-json", default=None, help="plot a test_cli --json result instead of evaluating")
    p.add_argument("--data", default="data", help="dataset folder for --checkpoint")
    p.add_argument("--no-download", action="store_true")
    C.add_backend_arg(p)
    p.add_argument("--out", default=None, help="output folder [viz/<model>]")
    return p


def _find_histories(args: argparse.Namespace) -> list[Path]:
    if args.history:
        return [Path(h) for h in args.history]
    if args.run_dir:
        d = Path(args.run_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"run folder not found: {d}")
        if args.model:
            return [d / f"{args.model}_history.csv"]
        found = sorted(d.glob("*_history.csv")) or sorted(d.glob("*_history.jsonl"))
        if not found:
            raise FileNotFoundError(f"no *_history.csv in {d}")
        return found[:1]
    return []


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = _find_histories(args)
    if not paths and not (args.checkpoint or args.eval_json):
        parser.error("give --history, --run-dir, --checkpoint or --eval-json")
    if args.labels and len(args.labels) != len(paths):
        parser.error(f"--labels has {len(args.labels)} names for {len(paths)} history files")
    histories = [read_history(p) for p in paths]

    def model_of(p: Path) -> str:
        return args.model or p.name.split("_history")[0]

    name = args.model or (model_of(paths[0]) if paths else None)
    written = []
    if len(histories) == 1:
        out = Path(args.out) if args.out else Path("viz") / name
        written += [plot_training_progress(histories[0], out, name), plot_comparison(histories[0], out, name),
                    write_summary(histories[0], out, name)]
    elif histories:
        labels = args.labels or [f"{model_of(p)} ({p.parent.name})" for p in paths]
        out = Path(args.out) if args.out else Path("viz") / "comparison"
        written.append(plot_runs(histories, labels, out, name="runs"))
        for h, lab in zip(histories, labels):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in lab)
            written.append(write_summary(h, out, safe))
    if args.eval_json or args.checkpoint:
        if args.eval_json:
            try:
                res = json.loads(Path(args.eval_json).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read evaluation results {args.eval_json}: {exc}") from None
        else:
            C.select_backend(args.backend, quiet=True)
            res = evaluate_checkpoint(args.checkpoint, args.data, download=not args.no_download)
        name = name or res["model"]
        out = Path(args.out) if args.out else Path("viz") / name
        written += plot_evaluation(res, out, name)
    for w in written:
        print(f"wrote {w}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
