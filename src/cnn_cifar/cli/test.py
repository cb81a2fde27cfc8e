"""test_cli: evaluate a checkpoint on the test set: accuracy, top-k, per-class metrics, confusion matrix."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import nn
from ..models import build_model, list_models
from . import common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test_cli.py", description="Evaluate a trained checkpoint on the test set.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=list_models(), default=None,
                   help="architecture the checkpoint must hold [default: whatever it holds]")
    p.add_argument("--resume", metavar="PATH", required=True, help="checkpoint to evaluate")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def format_report(res: dict) -> str:
    classes = [c["class"] for c in res["per_class"]]
    w = max(8, max(len(c) for c in classes))
    lines = [f"model {res['model']} ({res['checkpoint']}, epoch {res['epoch']}) on {res['dataset']} "
             f"test set: {res['n']} images",
             f"accuracy: {100 * res['accuracy']:.2f}%   loss: {res['loss']:.4f}",
             "top-k:    " + "   ".join(f"top-{k}: {100 * v:.2f}%" for k, v in res["topk"].items()),
             "",
             f"{'class':<{w}}  precision  recall     f1  accuracy  support"]
    for c in res["per_class"]:
        lines.append(f"{c['class']:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}"
                     f"  {100 * c['accuracy']:7.2f}%  {c['support']:7d}")
    m = res["macro"]
    lines.append(f"{'macro avg':<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {100 * m['accuracy']:7.2f}%")
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


def evaluate_checkpoint(path: str, data: str = "data", backend_choice: str = "auto", model: str | None = None,
                        dataset: str | None = None, batch_size: int = 500, limit: int | None = None,
                        download: bool = True, progress: bool = False) -> dict:
    """Load a checkpoint into its model and evaluate it on the test set; returns the result dict."""
    from ..data import BatchLoader, load_dataset
    from ..training import CheckpointError, classification_report, evaluate, load_checkpoint

    ck = load_checkpoint(path, expected_model=model)
    name = ck["model"]
    C.select_backend(backend_choice, quiet=not progress)
    dataset = dataset or ck.get("dataset") or "cifar10"
    ds = load_dataset(dataset, data, download=download, progress=progress)
    cfg = ck.get("model_config", {})
    num_classes = int(cfg.get("num_classes", ds.spec.num_classes))
    if num_classes != ds.spec.num_classes:
        raise CheckpointError(f"{path} predicts {num_classes} classes but {dataset} has {ds.spec.num_classes}")
    net = build_model(name, num_classes=num_classes, dropout=cfg.get("dropout", 0.0))
    try:
        net.load_state_dict(ck["state_dict"])
    except ValueError as exc:
        raise CheckpointError(f"{path} does not fit model '{name}': {exc}") from None
    x, y = ds.x_test[:limit], ds.y_test[:limit]
    loader = BatchLoader(x, y, batch_size, ds.spec.mean, ds.spec.std)
    ev = evaluate(net, loader, nn.SoftmaxCrossEntropy(), num_classes, progress=progress)
    report = classification_report(ev["confusion_matrix"], ds.classes)
    return {"model": name, "checkpoint": str(path), "epoch": int(ck["epoch"]), "dataset": dataset,
            "n": ev["n"], "accuracy": ev["accuracy"], "loss": ev["loss"],
            "topk": {str(k): v for k, v in ev["topk"].items()},
            "per_class": report["per_class"], "macro": report["macro"],
            "confusion_matrix": ev["confusion_matrix"].tolist(), "classes": ds.classes}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = evaluate_checkpoint(args.resume, args.data, args.backend, model=args.model, dataset=args.dataset,
                              batch_size=args.batch_size, limit=args.limit_test, download=not args.no_download,
                              progress=not args.quiet)
    print(format_report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        from ..viz import plot_evaluation
        out = Path(args.out) if args.out else Path("viz") / res["model"]
        for p in plot_evaluation(res, out, res["model"]):
            print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
