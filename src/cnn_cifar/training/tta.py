"""Test-time augmentation: the model applied to several views of each image, logits averaged: the image and its
mirror (``flip``), and with them the image translated one pixel each way diagonally (``flip-translate``, the
six views of the fast CIFAR-10 recipes)."""
from __future__ import annotations

from ..backend import Array, get_array_module
from ..errors import SettingError
from ..nn import Module

TTA_CHOICES = ("flip", "flip-translate")


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


class FlipTranslateTTA(FlipTTA):
    """Half the mirror-averaged logits of the image, half the mean of the mirror-averaged logits of the image
    translated one pixel down-right and one pixel up-left (crops of its reflect-padded copy): six views, as
    airbench's ``tta_level=2``. Evaluation only."""

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        h, w = x.shape[2:]
        padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        logits = super().forward(x)
        shifted = super().forward(xp.ascontiguousarray(padded[:, :, 0:h, 0:w]))
        shifted += super().forward(xp.ascontiguousarray(padded[:, :, 2:h + 2, 2:w + 2]))
        logits *= 0.5
        logits += 0.25 * shifted
        return logits


def with_tta(model: Module, tta: str | None) -> Module:
    """``model`` wrapped for test-time augmentation ``tta`` (None or "none": the model itself)."""
    if tta in (None, "none"):
        return model
    if tta == "flip":
        return FlipTTA(model)
    if tta == "flip-translate":
        return FlipTranslateTTA(model)
    raise SettingError(f"unknown tta {tta!r}; choose one of {', '.join(TTA_CHOICES)}", "tta")
