"""Classifying image files with a trained checkpoint: decode (Pillow), fit to 32x32, normalise with the
statistics the weights were trained with, and return each image's top-k classes with probabilities."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_HIGH_BIT_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ORIENTATIONS = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down",
                 5: "mirrored and rotated 90 degrees counter-clockwise", 6: "rotated 90 degrees clockwise",
                 7: "mirrored and rotated 90 degrees clockwise", 8: "rotated 90 degrees counter-clockwise"}


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Decode a PNG/JPEG/TIFF/... file to RGB uint8 (3, 32, 32), as a photo viewer would show it, and say in
    the note what was done to it:

    - an EXIF orientation (cameras, phones) is applied, so the image is upright;
    - 16-bit and float grayscale images are scaled to 8 bits first (see `_to_8bit`), since Pillow's own
      conversion clips them to 0..255 and a 16-bit image would come out almost all white;
    - grayscale, bilevel, palette, CMYK, YCbCr and LAB images become RGB by Pillow's conversion; images with
      an alpha channel or a transparent colour (PNG tRNS, GIF) are composited on white;
    - other sizes are resized (bilinear, antialiased, as torchvision's Resize).

    Embedded ICC colour profiles are ignored (the values are taken as sRGB). A missing, broken or absurdly
    large file, or a mode Pillow cannot convert, raises ImageError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            notes: list[str] = []
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in _ORIENTATIONS:
                notes.append(f"{_ORIENTATIONS[orientation]} as its EXIF orientation {orientation} says")
                im = ImageOps.exif_transpose(im)
            im = _to_rgb(im, notes)
            if im.size != (SIZE, SIZE):
                notes.append(f"resized from {im.size[0]}x{im.size[1]} to {SIZE}x{SIZE}")
                im = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
            pixels = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return LoadedImage(str(path), pixels, "; ".join(notes))


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """`im` as an RGB image, transparent pixels composited on white; appends what was done to `notes`."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _HIGH_BIT_DEPTH:
        im, how = _to_8bit(im)
        notes.append(f"{how} and converted to RGB")
    else:
        notes.append("transparent colour composited on white" if im.mode == "RGB" else f"{im.mode} converted to RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> tuple[Image.Image, str]:
    """A high-bit-depth grayscale image (mode I;16*, I or F) as 8-bit "L", or "LA" where a 16-bit PNG's tRNS
    names a transparent gray value, and a few words saying how it was scaled.

    Integer images are taken as 16-bit (0..65535, what 16-bit PNG, TIFF and PGM files hold; older Pillow opens
    16-bit PNGs as "I"): value * 255 / 65535, rounded, values outside 0..65535 clipped. Float images (float
    TIFFs) have no fixed range: within 0..1 (the usual convention) they are scaled by 255, otherwise taken
    as 0..255 and clipped, as Pillow does; NaN is black."""
    values = np.asarray(im)
    if im.mode == "F":
        v = np.nan_to_num(values.astype(np.float64))
        unit = v.max(initial=0.0) <= 1
        gray = np.clip(np.rint(v * 255 if unit else v), 0, 255)
        how = "F (floats taken as 0..1) scaled to 8 bits" if unit else "F (floats taken as 0..255) rounded to 8 bits"
    else:
        v = np.clip(values.astype(np.int64), 0, 65535)
        gray = (v * 255 + 32767) // 65535                  # round(v * 255 / 65535), exactly (no ties occur)
        how = f"{im.mode} ({'' if im.mode.startswith('I;16') else 'taken as '}16-bit) scaled to 8 bits"
    out = Image.fromarray(gray.astype(np.uint8))
    key = im.info.get("transparency")
    if im.mode != "F" and isinstance(key, int):
        out = Image.merge("LA", [out, Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))])
    return out, how


def class_names(ck: Checkpoint, num_classes: int) -> list[str]:
    """The checkpoint's class names, else CIFAR-10/100's for 10/100 classes, else 'class i'."""
    if ck.classes and len(ck.classes) == num_classes:
        return [str(c) for c in ck.classes]
    if num_classes == 10:
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return [f"class {i}" for i in range(num_classes)]


def normalization(ck: Checkpoint, num_classes: int) -> tuple[tuple, tuple]:
    """The (mean, std) to feed the checkpoint's weights: the recorded ones, else CIFAR-100's statistics for a
    100-class model and CIFAR-10's otherwise."""
    default = CIFAR100 if num_classes == 100 else CIFAR10
    return ck.normalization(default.mean, default.std)


class Classifier:
    """A checkpoint's model in eval mode with its normalisation and class names."""

    def __init__(self, path: str | os.PathLike):
        ck = load_checkpoint(path)
        self.model = ck.rebuild_model(source=str(path))
        self.num_classes = self.model.config["num_classes"]
        self.model.eval()
        self.mean, self.std = normalization(ck, self.num_classes)
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
