#!/usr/bin/env python3
"""Write tests/fixtures/pretrained_predictions.json: each shipped checkpoint's logits and top-1 classes on
the first 40 test images of the suite's generated CIFAR-10 (tests/conftest.py: write_fake_cifar10).

tests/test_pretrained.py compares against it, so a change that alters what a shipped file predicts (a
layer's arithmetic, the normalisation, the checkpoint reader) is seen. Rerun only when a shipped file is
replaced on purpose, and say why in the commit:

    uv run python tools/pretrained_golden.py
"""
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from cnn_cifar.data import load_dataset  # noqa: E402
from cnn_cifar.inference import Classifier  # noqa: E402

from conftest import write_fake_cifar10  # noqa: E402

N = 40
OUT = ROOT / "tests" / "fixtures" / "pretrained_predictions.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar10(pathlib.Path(tmp))
        ds = load_dataset("cifar10", tmp, download=False)
    golden = {}
    for path in sorted((ROOT / "pretrained").glob("*.pkl")):
        clf = Classifier(path)
        logp = np.log(clf.probabilities(ds.x_test[:N]))
        golden[path.name] = {"log_probabilities": np.round(logp, 6).tolist(),
                             "top1": logp.argmax(1).tolist()}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"images": f"write_fake_cifar10 test images 0..{N - 1}", "models": golden}) + "\n")
    print(f"wrote {OUT} ({', '.join(golden)})")


if __name__ == "__main__":
    main()
