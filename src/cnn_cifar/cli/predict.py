"""predict_cli: classify image files with a trained checkpoint (top-k classes and probabilities)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..inference import Classifier, ImageError, load_image
from . import common as C

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[3] / "pretrained" / "resnet32.pkl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict_cli.py", description="Classify images (PNG, JPEG, ...) with a "
                                "trained checkpoint. Images that are not 32x32 RGB are converted and resized.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--resume", metavar="CKPT", default=None,
                   help="checkpoint to classify with [default: the repository's pretrained/resnet32.pkl]")
    p.add_argument("--topk", type=C.positive_int, default=5, help="classes shown per image [5]")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    C.add_backend_arg(p)
    return p


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = Path(args.resume) if args.resume else DEFAULT_CHECKPOINT
    if not args.resume and not ckpt.is_file():
        raise ValueError(f"no --resume given and no shipped checkpoint at {ckpt}")
    C.select_backend(args.backend, quiet=True)
    clf = Classifier(ckpt)
    loaded, failed = [], []
    for path in args.images:
        try:
            loaded.append(load_image(path))
        except ImageError as exc:
            failed.append({"image": path, "error": str(exc)})
            print(f"error: {exc}", file=sys.stderr, flush=True)
    results = []
    if loaded:
        probs = clf.probabilities(np.stack([im.pixels for im in loaded]))
        for im, top in zip(loaded, clf.top(probs, args.topk)):
            results.append({"image": im.path, "note": im.note,
                            "top": [{"class": c, "probability": p} for c, p in top]})
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt), "model": clf.name, "results": results, "errors": failed},
                         indent=1))
    else:
        for r in results:
            print(f"{r['image']}" + (f"  ({r['note']})" if r["note"] else ""))
            for t in r["top"]:
                print(f"  {100 * t['probability']:6.2f}%  {t['class']}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
