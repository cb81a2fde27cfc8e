"""cnn_cifar.training.metrics and the test CLI's text report, checked against numbers worked out by hand.

The worked example (4 classes, 10 samples; class 3 is never predicted):

    y_true = 0 0 0 1 1 2 2 2 2 3
    y_pred = 0 1 0 1 1 2 0 2 1 1

    confusion matrix      TP  predicted  support   precision  recall  F1 = 2TP/(2TP+FP+FN)
    [2 1 0 0]   class 0    2      3         3        2/3       2/3    4/6 = 2/3
    [0 2 0 0]   class 1    2      5         2        2/5       1      4/7
    [1 1 2 0]   class 2    2      2         4        1         1/2    4/6 = 2/3
    [0 1 0 0]   class 3    0      0         1        0 (0/0)   0      0

    macro precision = (2/3 + 2/5 + 1 + 0) / 4 = 31/60
    macro recall    = (2/3 + 1 + 1/2 + 0) / 4 = 13/24
    macro F1        = (2/3 + 4/7 + 2/3 + 0) / 4 = 10/21
    accuracy        = 6 / 10
"""
from __future__ import annotations

import warnings
from fractions import Fraction as F

import numpy as np
import pytest

from cnn_cifar import backend
from cnn_cifar.cli.test import format_report
from cnn_cifar.data.augment import MixedTargets
from cnn_cifar.training import EpochMeter, NonFiniteLoss, classification_report, confusion_matrix, topk_correct
from cnn_cifar.training.metrics import correct_count, correct_hits

Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 1, 1]
CLASSES = ["plane", "car", "bird", "cat"]
CM = [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 2, 0], [0, 1, 0, 0]]
PRECISION = [F(2, 3), F(2, 5), F(1), F(0)]
RECALL = [F(2, 3), F(1), F(1, 2), F(0)]
F1 = [F(2, 3), F(4, 7), F(2, 3), F(0)]
SUPPORT = [3, 2, 4, 1]


@pytest.fixture
def strict_numerics():
    """Any warning is an error and so is any floating-point problem (0/0, x/0), so a NaN or a
    RuntimeWarning on the way to a 0 fails the test instead of passing silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            yield


# ------------------------------------------------------------------ confusion matrix
def test_confusion_matrix_worked_example():
    """cm[i, j] counts true class i predicted as j; rows sum to the support, columns to the predictions."""
    cm = confusion_matrix(np.array(Y_TRUE), np.array(Y_PRED), 4)
    assert cm.tolist() == CM
    assert cm.sum(axis=1).tolist() == SUPPORT
    assert cm.sum(axis=0).tolist() == [3, 5, 2, 0]


def test_confusion_matrix_is_not_transposed():
    """One sample of true class 0 predicted as 2 lands in row 0, column 2 (not row 2, column 0)."""
    cm = confusion_matrix(np.array([0]), np.array([2]), 3)
    assert cm.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_confusion_matrix_accepts_lists_and_empty_input():
    """Plain lists work, and no samples at all give an all-zero num_classes x num_classes matrix."""
    assert confusion_matrix([1, 1], [1, 0], 2).tolist() == [[0, 0], [1, 1]]
    empty = confusion_matrix(np.array([], np.int64), np.array([], np.int64), 3)
    assert empty.shape == (3, 3) and empty.sum() == 0


# ------------------------------------------------------------------ classification report
def test_report_worked_example(strict_numerics):
    """Every per-class value, the macro averages and the accuracy equal the hand-computed fractions; a class
    that is never predicted (class 3) gets precision 0 and F1 0, with no NaN and no warning."""
    rep = classification_report(np.array(CM), CLASSES)
    rows = rep["per_class"]
    assert [r["class"] for r in rows] == CLASSES
    for r, p, rc, f, s in zip(rows, PRECISION, RECALL, F1, SUPPORT):
        assert r["precision"] == pytest.approx(float(p), abs=1e-12), r
        assert r["recall"] == pytest.approx(float(rc), abs=1e-12), r
        assert r["f1"] == pytest.approx(float(f), abs=1e-12), r
        assert r["support"] == s and isinstance(r["support"], int)
    assert (rows[3]["precision"], rows[3]["recall"], rows[3]["f1"]) == (0.0, 0.0, 0.0)
    assert rep["macro"]["precision"] == pytest.approx(float(F(31, 60)), abs=1e-12)
    assert rep["macro"]["recall"] == pytest.approx(float(F(13, 24)), abs=1e-12)
    assert rep["macro"]["f1"] == pytest.approx(float(F(10, 21)), abs=1e-12)
    assert rep["accuracy"] == pytest.approx(0.6, abs=1e-12)


def test_per_class_accuracy_is_recall_and_macro_is_the_mean(strict_numerics):
    """Per-class 'accuracy' is correct / samples of that class, i.e. the recall, for every class; the macro
    row is the plain mean of the per-class rows (each class weighs the same, whatever its support)."""
    rep = classification_report(np.array(CM), CLASSES)
    for r, rc in zip(rep["per_class"], RECALL):
        assert r["accuracy"] == r["recall"] == pytest.approx(float(rc), abs=1e-12)
    for key in ("precision", "recall", "f1", "accuracy"):
        mean = sum(r[key] for r in rep["per_class"]) / len(CLASSES)
        assert rep["macro"][key] == pytest.approx(mean, abs=1e-12), key
    # the support-weighted mean would be the accuracy (0.6), not the macro recall (13/24): they differ here
    assert rep["macro"]["recall"] != pytest.approx(rep["accuracy"])


def test_class_with_no_samples(strict_numerics):
    """A class with no samples: recall, accuracy and F1 are 0 and support 0 (no 0/0 NaN), precision is 0
    when it was predicted (0 of 1 right) and when it was not; it still counts in the macro mean.

        y_true = 0 0 1     y_pred = 2 0 1     3 classes, class 2 has no samples but is predicted once
        cm = [[1 0 1] [0 1 0] [0 0 0]]
        precision 1, 1, 0   recall 1/2, 1, 0   F1 2/3, 1, 0   macro F1 = 5/9   accuracy 2/3
    """
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([2, 0, 1]), 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    rep = classification_report(cm, ["a", "b", "empty"])
    empty = rep["per_class"][2]
    assert empty == {"class": "empty", "precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "support": 0}
    assert [r["precision"] for r in rep["per_class"]] == [1.0, 1.0, 0.0]
    assert [r["recall"] for r in rep["per_class"]] == [0.5, 1.0, 0.0]
    assert rep["macro"]["f1"] == pytest.approx(float(F(5, 9)), abs=1e-12)
    assert rep["accuracy"] == pytest.approx(2 / 3, abs=1e-12)
    # neither predicted nor present
    rep = classification_report(confusion_matrix([0, 1], [0, 1], 3), ["a", "b", "ghost"])
    assert rep["per_class"][2] == {"class": "ghost", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "accuracy": 0.0, "support": 0}
    assert rep["macro"]["precision"] == pytest.approx(2 / 3, abs=1e-12)


def test_report_of_no_samples_at_all(strict_numerics):
    """An all-zero confusion matrix gives zeros everywhere, accuracy 0, and no division error."""
    rep = classification_report(np.zeros((3, 3), np.int64), ["a", "b", "c"])
    assert rep["accuracy"] == 0.0
    assert rep["macro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    assert all(r["support"] == 0 and r["f1"] == 0.0 for r in rep["per_class"])


def test_report_values_are_plain_python_numbers():
    """The report goes to JSON (--json): every number is a builtin float/int, not a NumPy scalar."""
    rep = classification_report(np.array(CM), CLASSES)
    for r in rep["per_class"]:
        assert {type(r[k]) for k in ("precision", "recall", "f1", "accuracy")} == {float}
        assert type(r["support"]) is int
    assert {type(v) for v in rep["macro"].values()} == {float} and type(rep["accuracy"]) is float


# ------------------------------------------------------------------ top-k
def test_topk_by_hand(xp):
    """Each sample's rank of its label, worked out by hand, gives the counts for k = 1, 2, 3.

        row 0: scores 0.1 0.5 0.4, label 2 -> rank 2      row 1: 0.9 0.04 0.06, label 1 -> rank 3
        row 2: 0.2 0.3 0.5,        label 0 -> rank 3      row 3: 0.7 0.2 0.1,   label 0 -> rank 1
    """
    logits = xp.asarray([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1]], dtype=xp.float32)
    y = xp.asarray([2, 1, 0, 0])
    assert topk_correct(logits, y, (1, 2, 3)) == {1: 1, 2: 2, 3: 4}
    assert topk_correct(logits, y, (2,)) == {2: 2}


def test_topk_larger_than_number_of_classes_counts_every_sample(xp):
    """k >= number of classes: every label is among the top k, so the count is the number of samples, even
    for the worst-ranked label; the results are plain ints on every backend."""
    logits = xp.asarray([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], dtype=xp.float32)
    y = xp.asarray([2, 0])                                # both labels ranked last
    got = topk_correct(logits, y, (1, 3, 5, 10))
    assert got == {1: 0, 3: 2, 5: 2, 10: 2}
    assert all(type(v) is int for v in got.values())


def test_topk_ties_go_to_the_lower_class_index(xp):
    """With tied scores the lower class index ranks first (as argmax does), so top-1 agrees with argmax.

        row 0: 1 1 0, label 0 -> rank 1 (wins the tie)      row 1: 1 1 0, label 1 -> rank 2 (loses it)
        row 2: 0 0 0, label 2 -> rank 3                     row 3: 0 5 5, label 2 -> rank 2
    """
    logits = xp.asarray([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 5, 5]], dtype=xp.float32)
    y = xp.asarray([0, 1, 2, 2])
    assert topk_correct(logits, y, (1, 2, 3)) == {1: 1, 2: 3, 3: 4}
    assert topk_correct(logits, y, (1,))[1] == int((logits.argmax(axis=1) == y).sum())


@pytest.mark.parametrize("num_classes", [100])
def test_top1_equals_argmax_accuracy_with_many_ties(num_classes):
    """CIFAR-100-sized logits with many ties (scores 0, 1 or 2): top-1 must count exactly the samples whose
    argmax is the label, as 'accuracy' does in evaluate(). Labels are chosen as the argmax, so both must be
    the number of samples."""
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, (1000, num_classes)).astype(np.float32)
    y = logits.argmax(axis=1)
    assert topk_correct(logits, y, (1,)) == {1: 1000}


# ------------------------------------------------------------------ the test CLI's text report
def _result(classes, cm, precision, recall, f1, support, macro, accuracy=0.6, loss=1.23456,
            topk=None) -> dict:
    return {"model": "cnn", "checkpoint": "ck/cnn_best.pkl", "epoch": 7, "dataset": "cifar10", "n": sum(support),
            "accuracy": accuracy, "loss": loss, "topk": topk or {"1": 0.6, "3": 0.9},
            "per_class": [{"class": c, "precision": p, "recall": r, "f1": f, "accuracy": r, "support": s}
                          for c, p, r, f, s in zip(classes, precision, recall, f1, support)],
            "macro": macro, "confusion_matrix": cm, "classes": classes}


def _worked_result() -> dict:
    rep = classification_report(np.array(CM), CLASSES)
    return _result(CLASSES, CM, *zip(*[(r["precision"], r["recall"], r["f1"], r["support"])
                                       for r in rep["per_class"]]), macro=rep["macro"])


def _line(text: str, first_word: str) -> list[str]:
    """The tokens of the one per-class (or macro) row starting with ``first_word``: those rows end in a
    percentage or a support after one, unlike the header and the confusion-matrix rows."""
    rows = [ln.split() for ln in text.splitlines()
            if ln.split()[:1] == [first_word] and any(t.endswith("%") for t in ln.split())]
    assert len(rows) == 1, (first_word, text)
    return rows[0]


def test_correct_counts_take_a_mixed_batchs_larger_share(xp):
    """Train accuracy's numerator: argmax equal to the label; for a mixed batch, to the label with the larger
    share (y_a from lam 0.5 up). ``correct_hits`` stays on the logits' device, ``correct_count`` reads it."""
    logits = xp.asarray([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0]])
    y_a, y_b = xp.asarray([1, 1, 2, 0]), xp.asarray([0, 0, 1, 2])
    assert correct_count(logits, y_a) == 2 and correct_count(logits, y_b) == 2
    assert correct_count(logits, MixedTargets(y_a, y_b, 0.5)) == 2        # y_a: argmax 1, 0, 2, 2 hits rows 0, 2
    hits = correct_hits(logits, MixedTargets(y_a, y_b, 0.3))               # y_b: rows 1 and 3
    assert backend.get_array_module(hits) is xp and int(backend.to_numpy(hits)) == 2


def test_epoch_meter_counts_where_the_logits_are_and_names_the_first_non_finite_step(xp):
    """On the host a step's figures are added at once; on a device the correct predictions and a deferred loss
    (a 0-d device array) are summed there and folded in by ``read``, which names the first step whose loss
    was not finite. ``add`` takes figures counted elsewhere (a data-parallel step's)."""
    meter = EpochMeter(lambda step: f"at step {step} of the test")
    logits, y = xp.asarray([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), xp.asarray([1, 1, 1])
    deferred = xp is not np
    loss = (lambda v: xp.asarray(v)) if deferred else float
    meter.count(loss(0.5), logits, y, 1)
    meter.count(loss(1.0), logits, y, 2)
    assert meter.unchecked == deferred
    assert meter.read() == {"loss_sum": 4.5, "correct": 4, "seen": 6, "seconds": 0.0} and not meter.unchecked
    meter.add(2.0, 5, 10)
    assert meter.read() == {"loss_sum": 24.5, "correct": 9, "seen": 16, "seconds": 0.0}
    meter.reset({"loss_sum": 1.0, "correct": 1, "seen": 2, "seconds": 3.0})   # an epoch resumed part-way
    meter.count(loss(0.5), logits, y, 3)
    assert meter.read() == {"loss_sum": 2.5, "correct": 3, "seen": 5, "seconds": 3.0}
    if deferred:
        for step, value in ((4, 0.5), (5, float("nan")), (6, float("inf"))):
            meter.count(loss(value), logits, y, step)
        with pytest.raises(NonFiniteLoss, match=r"^loss became non-finite \(NaN or infinite\) at step 5 of the test$"):
            meter.read()


def test_format_report_numbers():
    """The header, accuracy and top-k lines, each per-class row, the macro row and the confusion rows carry
    the worked example's numbers, rounded as printed (precision/recall/F1 to 4 places, accuracy in %)."""
    text = format_report(_worked_result())
    lines = text.splitlines()
    assert lines[0] == "model cnn (ck/cnn_best.pkl, epoch 7) on cifar10 test set: 10 images"
    assert lines[1] == "accuracy: 60.00%   loss: 1.2346"
    assert lines[2] == "top-k:    top-1: 60.00%   top-3: 90.00%"
    assert lines[4].split() == ["class", "precision", "recall", "f1", "accuracy", "support"]
    #                              class    precision  recall    f1        accuracy   support
    assert _line(text, "plane") == ["plane", "0.6667", "0.6667", "0.6667", "66.67%", "3"]
    assert _line(text, "car") == ["car", "0.4000", "1.0000", "0.5714", "100.00%", "2"]
    assert _line(text, "bird") == ["bird", "1.0000", "0.5000", "0.6667", "50.00%", "4"]
    assert _line(text, "cat") == ["cat", "0.0000", "0.0000", "0.0000", "0.00%", "1"]
    # macro: 31/60 = 0.51667, 13/24 = 0.54167, 10/21 = 0.47619
    assert _line(text, "macro") == ["macro", "avg", "0.5167", "0.5417", "0.4762", "54.17%"]
    i = lines.index("confusion matrix (rows: true class, columns: predicted)")
    assert lines[i + 1].split() == CLASSES
    assert [ln.split() for ln in lines[i + 2:]] == [["plane", "2", "1", "0", "0"], ["car", "0", "2", "0", "0"],
                                                    ["bird", "1", "1", "2", "0"], ["cat", "0", "1", "0", "0"]]


def test_format_report_columns_line_up():
    """Exact text of the header, a per-class row and a confusion row with the minimum name width (that of
    "macro avg", 9), so the numbers sit under their headers."""
    lines = format_report(_worked_result()).splitlines()
    assert lines[4] == "class      precision  recall     f1  accuracy  support"
    assert lines[5] == "plane         0.6667  0.6667  0.6667    66.67%        3"
    assert lines[-1] == "cat            0      1      0      0"


def test_format_report_macro_row_lines_up_with_short_names():
    """The macro row's numbers sit in the same columns as the per-class rows' even when every class name is
    short (here at most 5 characters)."""
    lines = format_report(_worked_result()).splitlines()
    assert lines[9] == "macro avg     0.5167  0.5417  0.4762    54.17%"
    assert lines[9].index("0.5167") == lines[5].index("0.6667")


def test_format_report_long_names_widen_and_shorten_in_matrix_header():
    """A class name longer than 8 characters widens the name column to fit it; the confusion-matrix header
    shows only the first 6 characters of each name."""
    classes = ["automobile", "ship"]
    res = _result(classes, [[3, 1], [0, 4]], [1.0, 0.8], [0.75, 1.0], [6 / 7, 8 / 9], [4, 4],
                  {"precision": 0.9, "recall": 0.875, "f1": 0.873, "accuracy": 0.875}, accuracy=0.875)
    lines = format_report(res).splitlines()
    assert lines[4] == "class       precision  recall     f1  accuracy  support"
    assert lines[5] == "automobile     1.0000  0.7500  0.8571    75.00%        4"
    assert lines[6] == "ship           0.8000  1.0000  0.8889   100.00%        4"
    assert lines[7] == "macro avg      0.9000  0.8750  0.8730    87.50%"
    assert lines[-3].split() == ["automo", "ship"]
    assert lines[-2] == "automobile      3      1"


@pytest.mark.parametrize("num_classes, full_matrix", [(20, True), (21, False)])
def test_format_report_matrix_only_up_to_20_classes(num_classes, full_matrix):
    """Up to 20 classes the confusion matrix is printed row by row; above, one line names its size instead
    (the per-class rows are printed either way)."""
    classes = [f"c{i}" for i in range(num_classes)]
    cm = np.eye(num_classes, dtype=np.int64).tolist()
    ones = [1.0] * num_classes
    res = _result(classes, cm, ones, ones, ones, [1] * num_classes,
                  {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}, accuracy=1.0)
    lines = format_report(res).splitlines()
    per_class = [ln.split() for ln in lines if ln.split()[1:2] == ["1.0000"]]
    assert per_class == [[c, "1.0000", "1.0000", "1.0000", "100.00%", "1"] for c in classes]
    matrix_row_5 = ["c5"] + ["1" if j == 5 else "0" for j in range(num_classes)]
    if full_matrix:
        i = lines.index("confusion matrix (rows: true class, columns: predicted)")
        assert len(lines) == i + 2 + num_classes
        assert lines[i + 1].split() == classes
        assert lines[i + 2 + 5].split() == matrix_row_5
        assert not any(ln.startswith("confusion matrix:") for ln in lines)
    else:
        assert lines[-1] == f"confusion matrix: {num_classes}x{num_classes} (see --json or --plot)"
        assert lines[-2] == ""
        assert "confusion matrix (rows: true class, columns: predicted)" not in lines
        assert matrix_row_5 not in [ln.split() for ln in lines]
