"""Every checkpoint shipped in pretrained/ loads through the restricted unpickler, holds weights only, and
evaluates and predicts on a slice of images written by the test fixture (a broken file fails CI)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.data import load_dataset
from cnn_cifar.inference import Classifier
from cnn_cifar.models import build_model, options_of
from cnn_cifar.training import evaluate_checkpoint, load_checkpoint

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
SHIPPED = sorted(PRETRAINED.glob("*.pkl"))
GOLDEN = json.loads((Path(__file__).resolve().parent / "fixtures" / "pretrained_predictions.json").read_text())


def test_something_is_shipped():
    assert SHIPPED, "pretrained/ holds no checkpoint"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_loads_evaluates_and_predicts(path, cifar_root):
    ck = load_checkpoint(path)
    assert ck.optimizer is None and not ck.history and not ck.rng              # weights only
    assert path.stem == ck.model and ck.mean is not None and len(ck.classes) == ck.num_classes
    model = build_model(ck.model, num_classes=ck.num_classes, **options_of(ck.model_config))
    model.load_state_dict(ck.state_dict)                                       # strict: every tensor fits
    res = evaluate_checkpoint(path, cifar_root, limit=40, download=False)
    assert res["n"] == 40 and 0.0 <= res["accuracy"] <= 1.0 and np.isfinite(res["loss"])
    clf = Classifier(path)
    probs = clf.probabilities(np.zeros((2, 3, 32, 32), np.uint8))
    assert probs.shape == (2, ck.num_classes) and np.allclose(probs.sum(1), 1)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_readme_gives_each_files_sha256(path):
    text = (PRETRAINED / "README.md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.search(rf"`{path.name}`.*?{digest}", text, re.S), f"{path.name}'s sha256 is not in pretrained/README.md"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_predicts_what_it_predicted_when_shipped(path, cifar_root):
    """The log-probabilities and top-1 classes pinned by tools/pretrained_golden.py on the generated test
    images; top-1 may differ only where the pinned top two are within the tolerance (a near-tie)."""
    assert path.name in GOLDEN["models"], f"{path.name} has no golden predictions (tools/pretrained_golden.py)"
    want = GOLDEN["models"][path.name]
    want_logp = np.array(want["log_probabilities"])
    ds = load_dataset("cifar10", cifar_root, download=False)
    logp = np.log(Classifier(path).probabilities(ds.x_test[:len(want_logp)]))
    np.testing.assert_allclose(logp, want_logp, atol=1e-4, rtol=0)
    top2 = np.sort(want_logp, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2e-4
    assert (logp.argmax(1) == np.array(want["top1"]))[decided].all()
    res = evaluate_checkpoint(path, cifar_root, limit=len(want_logp), download=False)
    assert res["accuracy"] == pytest.approx(np.mean(np.array(want["top1"]) == ds.y_test[:len(want_logp)]))


def test_every_shipped_checkpoint_has_golden_predictions():
    assert sorted(GOLDEN["models"]) == [p.name for p in SHIPPED]
