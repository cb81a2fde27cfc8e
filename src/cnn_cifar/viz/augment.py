"""A PNG grid of augmented training images (train_cli --show-augment), to see what the model is trained on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .. import backend
from ..data import BatchLoader
from ..training.mixing import hard_labels


def show_augment(loader: BatchLoader, n: int, classes: list[str], model: str, out_dir: str | None = None) -> Path:
    """Draw the first ``n`` images of the loader's first batches (augmented as in training, normalisation
    undone), titled with their label (the dominant one of a mixed image), into <out_dir>/<model>_augment.png."""
    images, labels = [], []
    for xb, yb in loader:
        images.append(backend.to_numpy(xb))
        labels.append(backend.to_numpy(hard_labels(yb)))
        if sum(len(x) for x in images) >= n:
            break
    x = np.concatenate(images)[:n]
    y = np.concatenate(labels)[:n]
    x = (x * np.asarray(loader.std, np.float32)[None, :, None, None]
         + np.asarray(loader.mean, np.float32)[None, :, None, None])
    x = np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)
    cols = min(n, 8)
    rows = -(-len(x) // cols)
    fig = Figure(figsize=(1.4 * cols, 1.55 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, label in zip(axes.ravel(), x, y):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(classes[int(label)], fontsize=7)
    fig.tight_layout()
    path = Path(out_dir or Path("viz") / model) / f"{model}_augment.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
