"""Classifying image files with a trained checkpoint: decode (Pillow), fit to 32x32, normalise with the
statistics the weights were trained with, and return each image's top-k classes with probabilities."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import backend, nn
from .data.augment import normalize
from .data.datasets import CIFAR10, CIFAR100
from .training.checkpoint import Checkpoint, load_checkpoint

SIZE = 32


class ImageError(ValueError):
    """An image file is missing, unreadable or not an image (the message names it)."""


@dataclass
class LoadedImage:
    path: str
    pixels: np.ndarray            # uint8 (3, 32, 32), RGB
    note: str = ""                # what was done to fit it (mode conversion, resize), for the user


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Decode a PNG/JPEG/... file to RGB uint8 (3, 32, 32); other sizes are resized (bilinear, antialiased,
    as torchvision's Resize) and the note says so; grayscale, palette and alpha images become RGB (alpha is
    composited on white)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            notes = []
            if im.mode != "RGB":
                notes.append(f"{im.mode} converted to RGB")
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, rgba).convert("RGB")
                else:
                    im = im.convert("RGB")
            if im.size != (SIZE, SIZE):
                notes.append(f"resized from {im.size[0]}x{im.size[1]} to {SIZE}x{SIZE}")
                im = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
            pixels = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return LoadedImage(str(path), pixels, "; ".join(notes))


def class_names(ck: Checkpoint, num_classes: int) -> list[str]:
    """The checkpoint's class names, else CIFAR-10/100's for 10/100 classes, else 'class i'."""
    if ck.classes and len(ck.classes) == num_classes:
        return [str(c) for c in ck.classes]
    if num_classes == 10:
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return [f"class {i}" for i in range(num_classes)]


class Classifier:
    """A checkpoint's model in eval mode with its normalisation and class names."""

    def __init__(self, path: str | os.PathLike):
        ck = load_checkpoint(path)
        self.model = ck.rebuild_model(source=str(path))
        self.num_classes = self.model.config["num_classes"]
        self.model.eval()
        default = CIFAR100 if self.num_classes == 100 else CIFAR10
        self.mean, self.std = ck.normalization(default.mean, default.std)
        self.classes = class_names(ck, self.num_classes)
        self.name = ck.model

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, 32, 32) -> softmax probabilities (N, classes) on the host."""
        x = normalize(pixels, self.mean, self.std)            # the loaders' arithmetic, bit for bit
        with nn.no_grad():
            logits = backend.to_numpy(self.model(backend.to_device(x))).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def top(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Each row's k most probable classes, most probable first (ties by class index)."""
        k = min(k, self.num_classes)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
