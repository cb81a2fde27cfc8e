"""Training-curve and evaluation plots, drawn on matplotlib Figures that are not attached to pyplot:
no display is needed and importing this module selects no matplotlib backend for the host process."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = {"train": "#1f77b4", "test": "#d62728", "lr": "#2ca02c", "dropout": "#9467bd", "gap": "#ff7f0e"}


def _series(history: Sequence[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, np.nan) for r in history], dtype=float)


def _best_index(history: Sequence[dict]) -> int:
    return int(np.nanargmax(_series(history, "test_acc")))


def _subplots(*args, figsize: tuple[float, float], **kw):
    """A (figure, axes) pair like pyplot.subplots, on a Figure that pyplot does not track."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kw)


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_training_progress(history: Sequence[dict], out_dir: str | os.PathLike, model: str) -> Path:
    """Loss, accuracy (train and test) and LR/dropout by epoch, best epoch marked."""
    ep = _series(history, "epoch")
    b = _best_index(history)
    fig, axes = _subplots(1, 3, figsize=(16, 4.6))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy (%)")):
        scale = 100.0 if key == "acc" else 1.0
        for split in ("train", "test"):
            ax.plot(ep, scale * _series(history, f"{split}_{key}"), marker="o" if len(ep) < 30 else None,
                    ms=3, color=COLORS[split], label=split)
        ax.axvline(ep[b], color="grey", ls="--", lw=1)
        ax.plot(ep[b], scale * _series(history, f"test_{key}")[b], "*", ms=14, color="gold", mec="k",
                label=f"best epoch {int(ep[b])}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[2]
    ax.plot(ep, _series(history, "lr"), color=COLORS["lr"], label="learning rate")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate", color=COLORS["lr"])
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ep, _series(history, "dropout"), color=COLORS["dropout"], ls="--", label="dropout")
    ax2.set_ylabel("dropout rate", color=COLORS["dropout"])
    ax2.set_ylim(0, max(0.05, float(np.nanmax(_series(history, "dropout"))) * 1.15))
    ax.set_title("Learning rate and dropout")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
    best = history[b]
    fig.suptitle(f"{model}: best test accuracy {100 * best['test_acc']:.2f}% at epoch {int(best['epoch'])}")
    fig.tight_layout()
    return _save(fig, Path(out_dir) / f"{model}_training_progress.png")


def plot_comparison(history: Sequence[dict], out_dir: str | os.PathLike, model: str) -> Path:
    """Train vs test accuracy and loss side by side, with the generalisation gap."""
    ep = _series(history, "epoch")
    tr_a, te_a = 100 * _series(history, "train_acc"), 100 * _series(history, "test_acc")
    tr_l, te_l = _series(history, "train_loss"), _series(history, "test_loss")
    fig, axes = _subplots(1, 3, figsize=(16, 4.6))
    axes[0].plot(ep, tr_a, color=COLORS["train"], label="train")
    axes[0].plot(ep, te_a, color=COLORS["test"], label="test")
    axes[0].fill_between(ep, tr_a, te_a, color=COLORS["gap"], alpha=0.15, label="gap")
    axes[0].set_title("Accuracy (%)")
    axes[1].plot(ep, tr_l, color=COLORS["train"], label="train")
    axes[1].plot(ep, te_l, color=COLORS["test"], label="test")
    axes[1].fill_between(ep, tr_l, te_l, color=COLORS["gap"], alpha=0.15, label="gap")
    axes[1].set_title("Loss")
    axes[2].plot(ep, tr_a - te_a, color=COLORS["gap"], label="train - test accuracy (points)")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_ylabel("accuracy gap (points)", color=COLORS["gap"])
    loss_ax = axes[2].twinx()
    loss_ax.plot(ep, te_l - tr_l, color="k", ls="--", label="test - train loss")
    loss_ax.set_ylabel("loss gap")
    axes[2].set_title("Generalisation gap")
    for ax in axes[:2]:
        ax.legend()
    lines = axes[2].get_lines()[:1] + loss_ax.get_lines()
    axes[2].legend(lines, [ln.get_label() for ln in lines], loc="best")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model}: train vs test (final gap {tr_a[-1] - te_a[-1]:+.2f} accuracy points)")
    fig.tight_layout()
    return _save(fig, Path(out_dir) / f"{model}_comparison.png")


def plot_runs(histories: Sequence[Sequence[dict]], labels: Sequence[str], out_dir: str | os.PathLike,
              name: str = "runs") -> Path:
    """Several runs overlaid: test accuracy, train accuracy and losses."""
    fig, axes = _subplots(1, 2, figsize=(13, 4.6))
    cmap = matplotlib.colormaps["tab10"]
    for i, (h, lab) in enumerate(zip(histories, labels)):
        ep = _series(h, "epoch")
        c = cmap(i % 10)
        axes[0].plot(ep, 100 * _series(h, "test_acc"), color=c, label=f"{lab} test")
        axes[0].plot(ep, 100 * _series(h, "train_acc"), color=c, ls=":", label=f"{lab} train")
        axes[1].plot(ep, _series(h, "test_loss"), color=c, label=f"{lab} test")
        axes[1].plot(ep, _series(h, "train_loss"), color=c, ls=":", label=f"{lab} train")
    axes[0].set_title("Accuracy (%)")
    axes[1].set_title("Loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Run comparison (solid: test, dotted: train)")
    fig.tight_layout()
    return _save(fig, Path(out_dir) / f"{name}_comparison.png")


def plot_per_class(res: dict, out_dir: str | os.PathLike, model: str) -> Path:
    """Per-class accuracy bars with precision and F1 beside them (up to 20 classes), or one horizontal bar
    per class sorted by accuracy (more classes, e.g. CIFAR-100)."""
    pc = res["per_class"]
    overall = 100 * res["accuracy"]
    if len(pc) > 20:
        order = sorted(pc, key=lambda c: c["accuracy"])
        fig, ax = _subplots(figsize=(8, 0.16 * len(pc) + 1.5))
        y = np.arange(len(order))
        ax.barh(y, [100 * c["accuracy"] for c in order], color=COLORS["train"], label="accuracy (= recall)")
        ax.set_yticks(y, [c["class"] for c in order], fontsize=6)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.axvline(overall, color="k", ls="--", lw=1, label=f"overall {overall:.2f}%")
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    else:
        names = [c["class"] for c in pc]
        x = np.arange(len(names))
        fig, ax = _subplots(figsize=(12, 5))
        w = 0.27
        for i, (key, col, lab) in enumerate((("accuracy", "#1f77b4", "accuracy (= recall)"),
                                             ("precision", "#ff7f0e", "precision"), ("f1", "#9467bd", "F1"))):
            bars = ax.bar(x + (i - 1) * w, [100 * c[key] for c in pc], w, color=col, label=lab)
            if key == "accuracy":
                ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.axhline(overall, color="k", ls="--", lw=1, label=f"overall {overall:.2f}%")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=9)
        ax.set_ylim(0, 118)                       # the band above 100% holds the legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", fontsize=8, ncol=4, frameon=False)
    ax.set_title(f"{model}: per-class metrics on the test set ({res['n']} images)")
    fig.tight_layout()
    return _save(fig, Path(out_dir) / f"{model}_per_class_accuracy.png")


def plot_confusion(res: dict, out_dir: str | os.PathLike, model: str) -> Path:
    """Row-normalised confusion matrix heatmap with class names and counts."""
    cm = np.asarray(res["confusion_matrix"], dtype=float)
    names = res.get("classes") or [c["class"] for c in res["per_class"]]
    k = len(names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(max(7.0, 0.75 * k), 24.0)
    fig, ax = _subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), names, rotation=45 if k <= 20 else 90, ha="right", fontsize=9 if k <= 20 else 5)
    ax.set_yticks(range(k), names, fontsize=9 if k <= 20 else 5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"{model}: confusion matrix (accuracy {100 * res['accuracy']:.2f}%)")
    fig.tight_layout()
    return _save(fig, Path(out_dir) / f"{model}_confusion_matrix.png")


def plot_evaluation(res: dict, out_dir: str | os.PathLike, model: str) -> list[Path]:
    """The evaluation plots for a test_cli result."""
    return [plot_per_class(res, out_dir, model), plot_confusion(res, out_dir, model)]


def summary_text(history: Sequence[dict], model: str) -> str:
    """Epochs, best/final losses and accuracies, best epoch and total time."""
    b = _best_index(history)
    last, best = history[-1], history[b]
    total = float(np.nansum(_series(history, "seconds")))
    lines = [
        f"model: {model}",
        f"epochs: {len(history)}",
        f"best epoch: {int(best['epoch'])}",
        f"best test accuracy: {100 * best['test_acc']:.2f}%",
        f"best test loss: {float(np.nanmin(_series(history, 'test_loss'))):.4f}",
        f"best train accuracy: {100 * float(np.nanmax(_series(history, 'train_acc'))):.2f}%",
        f"best train loss: {float(np.nanmin(_series(history, 'train_loss'))):.4f}",
        f"final train loss: {last['train_loss']:.4f}",
        f"final train accuracy: {100 * last['train_acc']:.2f}%",
        f"final test loss: {last['test_loss']:.4f}",
        f"final test accuracy: {100 * last['test_acc']:.2f}%",
        f"total training time: {total:.1f} s ({total / 60:.1f} min)",
    ]
    return "\n".join(lines) + "\n"


def write_summary(history: Sequence[dict], out_dir: str | os.PathLike, model: str) -> Path:
    path = Path(out_dir) / f"{model}_training_summary.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_text(history, model))
    return path
