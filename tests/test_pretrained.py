"""Every checkpoint shipped in pretrained/ loads through the restricted unpickler, holds weights only, and
evaluates and predicts on a slice of images written by the test fixture (a broken file fails CI)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.inference import Classifier
from cnn_cifar.models import build_model, options_of
from cnn_cifar.training import evaluate_checkpoint, load_checkpoint

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
SHIPPED = sorted(PRETRAINED.glob("*.pkl"))


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
