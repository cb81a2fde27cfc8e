"""Evaluation: a model over a loader (loss, accuracy, top-k, confusion matrix), and a saved checkpoint
rebuilt and evaluated on its dataset's test split."""
from __future__ import annotations

import os

import numpy as np
from tqdm.auto import tqdm

from .. import backend, nn
from ..data import BatchLoader, load_dataset
from . import metrics
from .checkpoint import CheckpointError, load_checkpoint
from .interrupt import StopFlag
from .tta import with_tta


def evaluate(model: nn.Module, loader: BatchLoader, criterion: nn.SoftmaxCrossEntropy, num_classes: int,
             ks: tuple[int, ...] = (1, 3, 5), progress: bool = False, desc: str = "eval",
             stop: StopFlag | None = None, comm=None) -> dict | None:
    """Eval-mode pass over a loader (BN running stats, no dropout): loss, accuracy, top-k and the confusion
    matrix. Returns None if ``stop`` was set part-way. On a GPU the sums, predictions and labels stay on the
    device until the last batch and are read back together (two host reads per evaluation, not six per batch).

    With ``comm`` (a Communicator; each rank's loader holds its own part of the test set) the sums are
    reduced over ranks, so every rank returns the figures of the whole set; ``y_true``/``y_pred`` stay
    this rank's part."""
    was_training = model.training
    summed = getattr(criterion, "reduction", "mean") == "sum"
    model.eval()
    loss_sum, n = 0.0, 0
    top: dict = {k: 0 for k in ks}
    preds, labels = [], []
    device = None                   # a GPU's running sums (loss, top-k), read back once at the end
    try:
        with nn.no_grad():
            for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
                logits = model(x)
                n += len(y)
                batch_loss, hits = criterion.loss_array(logits, y), metrics.topk_hits(logits, y, ks)
                if summed:
                    batch_loss = batch_loss / len(y)             # the figures are per image either way
                if backend.is_host(logits):
                    loss_sum += float(batch_loss) * len(y)
                    for k, c in hits.items():
                        top[k] += int(c)
                else:
                    xp = backend.get_array_module(logits)
                    row = xp.stack([batch_loss.astype(xp.float64) * len(y)]
                                   + [hits[k].astype(xp.float64) for k in ks])
                    device = row if device is None else device + row
                preds.append(logits.argmax(axis=1))
                labels.append(y)
                if stop is not None and stop.requested:
                    return None
    finally:
        model.train(was_training)
    if device is not None:                             # two transfers: the sums, then predictions and labels
        xp = backend.get_array_module(device)
        sums = backend.to_numpy(device)
        loss_sum, top = float(sums[0]), {k: int(v) for k, v in zip(ks, sums[1:])}
        both = backend.to_numpy(xp.stack([xp.concatenate(preds).astype(xp.int64),
                                          xp.concatenate(labels).astype(xp.int64)]))
        y_pred, y_true = both[0], both[1]
    else:
        y_true = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        y_pred = np.concatenate(preds).astype(np.int64) if preds else np.zeros(0, np.int64)
    cm = metrics.confusion_matrix(y_true, y_pred, num_classes)
    if comm is not None and comm.size > 1:
        sums = np.concatenate([[loss_sum, n], [top[k] for k in ks], cm.ravel()]).astype(np.float64)
        comm.allreduce_sum(sums)
        loss_sum, n = float(sums[0]), int(sums[1])
        top = {k: int(v) for k, v in zip(ks, sums[2:2 + len(ks)])}
        cm = sums[2 + len(ks):].reshape(cm.shape).astype(cm.dtype)
    return {"loss": loss_sum / max(n, 1), "accuracy": float(np.trace(cm) / n) if n else 0.0,
            "topk": {k: c / max(n, 1) for k, c in top.items()}, "n": n, "confusion_matrix": cm,
            "y_true": y_true, "y_pred": y_pred}


def evaluate_checkpoint(path: str | os.PathLike, data: str | os.PathLike = "data", model: str | None = None,
                        dataset: str | None = None, batch_size: int = 500, limit: int | None = None,
                        download: bool = True, progress: bool = False, tta: str | None = None) -> dict:
    """Rebuild a checkpoint's model and evaluate it on the test split of its dataset (or ``dataset``) on the
    active backend, with test-time augmentation ``tta`` if given; returns the results with per-class
    metrics, ready for printing, JSON or plots."""
    ck = load_checkpoint(path, expected_model=model)
    dataset = dataset or ck.dataset or "cifar10"
    ds = load_dataset(dataset, data, download=download, progress=progress)
    num_classes = ck.num_classes or ds.spec.num_classes
    if num_classes != ds.spec.num_classes:
        raise CheckpointError(f"{path} predicts {num_classes} classes but {dataset} has {ds.spec.num_classes}")
    net = ck.rebuild_model(num_classes, source=str(path))
    x, y = ds.x_test[:limit], ds.y_test[:limit]
    mean, std = ck.normalization(ds.spec.mean, ds.spec.std)
    loader = BatchLoader(x, y, batch_size, mean, std)
    ev = evaluate(with_tta(net, tta), loader, nn.SoftmaxCrossEntropy(), num_classes, progress=progress)
    report = metrics.classification_report(ev["confusion_matrix"], ds.classes)
    return {"model": ck.model, "checkpoint": str(path), "epoch": ck.epoch, "dataset": dataset,
            **({"tta": tta} if tta not in (None, "none") else {}),
            "n": ev["n"], "accuracy": ev["accuracy"], "loss": ev["loss"],
            "topk": {str(k): v for k, v in ev["topk"].items()},
            "per_class": report["per_class"], "macro": report["macro"],
            "confusion_matrix": ev["confusion_matrix"].tolist(), "classes": ds.classes}
