"""Classification metrics from predictions: correct counts (train accuracy's numerator, also for mixed
batches), top-k, confusion matrix, per-class report."""
from __future__ import annotations

import numpy as np

from ..backend import Array, get_array_module, to_numpy
from ..data.augment import MixedTargets
from .mixing import hard_labels


def correct_hits(logits: Array, y: Array | MixedTargets) -> Array:
    """How many rows of ``logits`` have their argmax at the (hard) label, as a 0-d array on the logits'
    device (no host read): train accuracy's numerator."""
    return (logits.argmax(axis=1) == hard_labels(y)).sum()


def correct_count(logits: Array, y: Array | MixedTargets) -> int:
    """``correct_hits`` read back as an int."""
    return int(to_numpy(correct_hits(logits, y)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def topk_hits(logits: Array, y: Array, ks: tuple[int, ...] = (1, 3, 5)) -> dict[int, Array]:
    """How many samples have their label among the k highest logits, for each k, as 0-d arrays on the logits'
    device (no host read)."""
    xp = get_array_module(logits)
    k_max = min(max(ks), logits.shape[1])
    # A stable sort ranks tied logits by class index, as argmax does, so top-1 equals accuracy on ties.
    top = (xp.argsort(-logits, axis=1, kind="stable") if xp is np else xp.argsort(-logits, axis=1))[:, :k_max]
    hit = top == y[:, None]
    return {k: hit[:, :min(k, k_max)].any(axis=1).sum() for k in ks}


def topk_correct(logits: Array, y: Array, ks: tuple[int, ...] = (1, 3, 5)) -> dict[int, int]:
    """``topk_hits`` read back as ints (on any backend)."""
    return {k: int(to_numpy(v)) for k, v in topk_hits(logits, y, ks).items()}


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_report(cm: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision, recall, F1 and accuracy (= recall: correct / samples of that class), macro averages."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    per_class = [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "accuracy": float(r),
                  "support": int(s)} for c, p, r, f, s in zip(classes, precision, recall, f1, support)]
    return {"per_class": per_class,
            "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean()), "accuracy": float(recall.mean())},
            "accuracy": float(tp.sum() / max(cm.sum(), 1))}
