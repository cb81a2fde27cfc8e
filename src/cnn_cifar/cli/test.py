"""test_cli: evaluate a checkpoint on the test set: accuracy, top-k, per-class metrics, confusion matrix."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..models import list_models
from ..training import evaluate_checkpoint, find_checkpoint, load_checkpoint
from ..training.tta import TTA_CHOICES
from . import common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test_cli.py", description="Evaluate a trained checkpoint on the test set.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=list_models(), default=None,
                   help="architecture the checkpoint must hold [default: whatever it holds]")
    p.add_argument("--resume", metavar="PATH", required=True,
                   help="checkpoint to evaluate, or a folder holding <model>_best.pkl")
    p.add_argument("--data", default="data", help="folder holding the dataset")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None,
                   help="[default: the one the checkpoint was trained on]")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--batch-size", type=C.positive_int, default=500)
    p.add_argument("--limit-test", type=C.positive_int, default=None, help="only the first N test images")
    C.add_backend_arg(p)
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    p.add_argument("--plot", action="store_true", help="write per-class and confusion-matrix plots")
    p.add_argument("--out", default=None, help="folder for --plot [viz/<model>]")
    p.add_argument("--tta", choices=TTA_CHOICES, default=None,
                   help="test-time augmentation: flip = average the logits of each image and its mirror image")
    p.add_argument("--summary", action="store_true",
                   help="print the checkpoint's model as a table (layers, output shapes, parameters, "
                   "multiply-adds) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def format_report(res: dict) -> str:
    classes = [c["class"] for c in res["per_class"]]
    w = max(len("macro avg"), max(len(c) for c in classes))
    lines = [f"model {res['model']} ({res['checkpoint']}, epoch {res['epoch']}) on {res['dataset']} "
             f"test set: {res['n']} images" + (f", test-time augmentation: {res['tta']}" if res.get("tta") else ""),
             f"accuracy: {100 * res['accuracy']:.2f}%   loss: {res['loss']:.4f}",
             "top-k:    " + "   ".join(f"top-{k}: {100 * v:.2f}%" for k, v in res["topk"].items()),
             "",
             f"{'class':<{w}}  precision  recall     f1  accuracy  support"]
    for c in res["per_class"]:
        lines.append(f"{c['class']:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}"
                     f"  {100 * c['accuracy']:7.2f}%  {c['support']:7d}")
    m = res["macro"]
    lines.append(f"{'macro avg':<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}"
                 f"  {100 * m['accuracy']:7.2f}%")
    cm = np.asarray(res["confusion_matrix"])
    if len(classes) <= 20:
        short = [c[:6] for c in classes]
        lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                  " " * (w + 1) + " ".join(f"{s:>6}" for s in short)]
        for c, row in zip(classes, cm):
            lines.append(f"{c:<{w}} " + " ".join(f"{v:6d}" for v in row))
    else:
        lines += ["", f"confusion matrix: {len(classes)}x{len(classes)} (see --json or --plot)"]
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.resume = str(find_checkpoint(args.resume, args.model))
    C.select_backend(args.backend, quiet=args.quiet)
    if args.summary:
        from .summary import format_summary
        ck = load_checkpoint(args.resume, expected_model=args.model)
        net = ck.rebuild_model(source=args.resume)
        print(f"{ck.model} from {args.resume}:")
        print(format_summary(net))
        return 0
    kw = dict(model=args.model, dataset=args.dataset, batch_size=args.batch_size, limit=args.limit_test,
              download=not args.no_download, progress=not args.quiet)
    res = evaluate_checkpoint(args.resume, args.data, tta=args.tta, **kw)
    print(format_report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        from ..viz import plot_evaluation  # matplotlib is imported only when plots are asked for
        out = Path(args.out) if args.out else Path("viz") / res["model"]
        for p in plot_evaluation(res, out, res["model"]):
            print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
