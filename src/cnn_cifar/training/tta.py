"""Test-time augmentation: the model applied to each image and its mirror image, logits averaged."""
from __future__ import annotations

import os

from .. import nn
from ..backend import Array, get_array_module
from ..data import BatchLoader, load_dataset
from ..models import build_model, options_of
from ..nn import Module
from . import metrics
from .checkpoint import CheckpointError, load_checkpoint
from .evaluation import evaluate

TTA_CHOICES = ("flip",)


class FlipTTA(Module):
    """``(model(x) + model(x mirrored left-right)) / 2``: evaluation only (no backward)."""

    def __init__(self, model: Module):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", {})

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        logits = self.model(x).copy()          # (a layer may hand out a buffer the next forward reuses)
        logits += self.model(xp.ascontiguousarray(x[:, :, :, ::-1]))
        logits *= 0.5
        return logits

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError("FlipTTA is for evaluation only")


def with_tta(model: Module, tta: str | None) -> Module:
    if tta in (None, "none"):
        return model
    if tta == "flip":
        return FlipTTA(model)
    raise ValueError(f"unknown --tta {tta!r}; choose one of {', '.join(TTA_CHOICES)}")


def evaluate_checkpoint_tta(path: str | os.PathLike, tta: str, data: str | os.PathLike = "data",
                            model: str | None = None, dataset: str | None = None, batch_size: int = 500,
                            limit: int | None = None, download: bool = True, progress: bool = False) -> dict:
    """``evaluation.evaluate_checkpoint`` with the rebuilt model wrapped by ``with_tta`` (same result keys,
    plus "tta"). Kept beside it until evaluate_checkpoint takes a model wrapper itself."""
    ck = load_checkpoint(path, expected_model=model)
    dataset = dataset or ck.dataset or "cifar10"
    ds = load_dataset(dataset, data, download=download, progress=progress)
    num_classes = ck.num_classes or ds.spec.num_classes
    if num_classes != ds.spec.num_classes:
        raise CheckpointError(f"{path} predicts {num_classes} classes but {dataset} has {ds.spec.num_classes}")
    net = build_model(ck.model, num_classes=num_classes, dropout=ck.model_config.get("dropout", 0.0),
                      **options_of(ck.model_config))
    try:
        net.load_state_dict(ck.state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{path} does not fit model '{ck.model}': {exc}") from None
    mean, std = ck.normalization(ds.spec.mean, ds.spec.std)
    loader = BatchLoader(ds.x_test[:limit], ds.y_test[:limit], batch_size, mean, std)
    ev = evaluate(with_tta(net, tta), loader, nn.SoftmaxCrossEntropy(), num_classes, progress=progress)
    report = metrics.classification_report(ev["confusion_matrix"], ds.classes)
    return {"model": ck.model, "checkpoint": str(path), "epoch": ck.epoch, "dataset": dataset, "tta": tta,
            "n": ev["n"], "accuracy": ev["accuracy"], "loss": ev["loss"],
            "topk": {str(k): v for k, v in ev["topk"].items()},
            "per_class": report["per_class"], "macro": report["macro"],
            "confusion_matrix": ev["confusion_matrix"].tolist(), "classes": ds.classes}
