"""Test-time augmentation: the model applied to each image and its mirror image, logits averaged."""
from __future__ import annotations

from ..backend import Array, get_array_module
from ..errors import SettingError
from ..nn import Module

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
    """``model`` wrapped for test-time augmentation ``tta`` (None or "none": the model itself)."""
    if tta in (None, "none"):
        return model
    if tta == "flip":
        return FlipTTA(model)
    raise SettingError(f"unknown tta {tta!r}; choose one of {', '.join(TTA_CHOICES)}", "tta")
