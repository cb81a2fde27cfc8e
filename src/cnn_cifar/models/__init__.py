"""Model registry: ``build_model(name, num_classes, dropout)`` and ``list_models()``."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..nn import Module
from .resnet import ResNet
from .simple_cnn import SimpleCNN

_DEFAULT_DROPOUT = {"cnn": 0.6}
_RESNET_DEPTHS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
                  "resnet56": 56, "resnet110": 110}


def _builders() -> dict[str, Callable[..., Module]]:
    out: dict[str, Callable[..., Module]] = {"cnn": SimpleCNN}
    for name, depth in _RESNET_DEPTHS.items():
        out[name] = (lambda d: lambda **kw: ResNet(depth=d, **kw))(depth)
    return out


def list_models() -> list[str]:
    """Names accepted by build_model."""
    return list(_builders())


def default_dropout(name: str) -> float:
    """The dropout rate a model is built with when none is given."""
    return _DEFAULT_DROPOUT.get(name, 0.0)


def build_model(name: str, num_classes: int = 10, dropout: float | None = None, seed: int | None = 0,
                dtype: Any = np.float32, **kw: Any) -> Module:
    """Build a model by name; the same seed gives the same initial weights."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(builders)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = builders[name](num_classes=num_classes,
                           dropout=default_dropout(name) if dropout is None else dropout,
                           seed=seed, dtype=dtype, **kw)
    model.config = {"name": name, "num_classes": num_classes, "dropout": float(model.dropout_rate() or 0.0)}
    return model


__all__ = ["ResNet", "SimpleCNN", "build_model", "default_dropout", "list_models"]
