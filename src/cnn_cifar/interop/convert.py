"""Between PyTorch state dicts and our checkpoints: key names, shapes, normalisation.

Our models already use PyTorch's names and layouts, so most files map one to one. ``from_torch`` also
accepts the usual variations (a ``module.`` prefix from DataParallel, a ``state_dict`` wrapper, the CIFAR
ResNets' head called ``linear``, and this project's PyTorch twin in ``shared/reference``); ``to_torch``
writes our names, or the twin's so the twin loads them with ``load_state_dict(strict=True)``.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ..models import build_model
from ..nn import Module
from ..training.checkpoint import Checkpoint, CheckpointError

KEY_STYLES = ("ours", "linear-head", "twin")


class ShortcutMismatch(CheckpointError):
    """The file's ResNet has option-A (parameter-free) shortcuts, the model asked for has projections."""


def find_state_dict(obj: object) -> dict:
    """The tensor dict inside a loaded PyTorch file: the object itself, or its 'state_dict' / 'model' entry."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, np.ndarray) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            return obj
    raise CheckpointError("no state dict (a dict of tensors) in the file")


def _strip_module(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _twin_key(model: Module) -> Callable[[str], str]:
    """Our key -> the PyTorch twin's (conv1/bn1 -> conv/bn; ResNet stages flattened into ``layers.i``)."""
    blocks = (model.depth - 2) // 6 if hasattr(model, "depth") else 0

    def rename(key: str) -> str:
        if key.startswith("conv1."):
            return "conv." + key[len("conv1."):]
        if blocks and key.startswith("bn1."):
            return "bn." + key[len("bn1."):]
        m = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
        if m and blocks:
            return f"layers.{(int(m[1]) - 1) * blocks + int(m[2])}.{m[3]}"
        return key
    return rename


def renamer(style: str, model: Module) -> Callable[[str], str]:
    """A function mapping our state-dict keys to those of ``style``."""
    if style == "ours":
        return lambda k: k
    if style == "linear-head":
        return lambda k: "linear." + k[len("fc."):] if k.startswith("fc.") else k
    if style == "twin":
        return _twin_key(model)
    raise ValueError(f"unknown key style {style!r}; choose one of {', '.join(KEY_STYLES)}")


def _match_style(theirs: dict, model: Module) -> tuple[str, Callable[[str], str]]:
    """The key style under which the file's keys best match the model's (exactly, when it fits)."""
    ours = list(model.state_dict())
    best = None
    for style in KEY_STYLES:
        rename = renamer(style, model)
        hits = sum(rename(k) in theirs for k in ours)
        if best is None or hits > best[0]:
            best = (hits, style, rename)
    return best[1], best[2]


def from_torch(state: dict, model_name: str, mean: tuple | None = None, std: tuple | None = None,
               **options: object) -> Checkpoint:
    """Our checkpoint (weights, model config, normalisation) for a PyTorch state dict of ``model_name``.

    The class count comes from the head's weight. Every tensor must be there with our shape; a missing,
    extra or mis-shaped one is a CheckpointError that names it. ``num_batches_tracked`` may be absent
    (older PyTorch files) and is then 0.
    """
    state = _strip_module(state)
    head = next((state[k] for k in ("fc.weight", "linear.weight", "fc2.weight") if k in state), None)
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 10
    model = build_model(model_name, num_classes=num_classes, dropout=0.0, **options)
    style, rename = _match_style(state, model)
    mine = model.state_dict()
    loaded, used = {}, set()
    for key, current in mine.items():
        theirs = rename(key)
        if theirs not in state:
            if key.endswith("num_batches_tracked"):
                loaded[key] = np.zeros((), np.int64)
                continue
            missing = f"the file has no tensor '{theirs}' for {model_name}'s '{key}' (shape {tuple(current.shape)})"
            if ".shortcut." in key and options.get("shortcut", "projection") == "projection":
                raise ShortcutMismatch(f"{missing} (weights with parameter-free option-A shortcuts need "
                                       f"shortcut='pad')")
            raise CheckpointError(missing)
        value = np.asarray(state[theirs])
        if value.shape != current.shape:
            raise CheckpointError(f"tensor '{theirs}' has shape {tuple(value.shape)}, {model_name}'s '{key}' "
                                  f"needs {tuple(current.shape)}")
        loaded[key] = value.astype(current.dtype)
        used.add(theirs)
    extra = [k for k in state if k not in used]
    if extra:
        raise CheckpointError(f"the file has tensors {model_name} does not: {', '.join(extra[:5])}"
                              f"{' ...' if len(extra) > 5 else ''} (a different architecture or shortcut?)")
    model.load_state_dict(loaded)
    return Checkpoint(model=model_name, state_dict=model.state_dict(), epoch=0, model_config=dict(model.config),
                      best_accuracy=-1.0, mean=None if mean is None else [float(v) for v in mean],
                      std=None if std is None else [float(v) for v in std],
                      args={"converted_from": "pytorch", "key_style": style})


def to_torch(ck: Checkpoint, style: str = "ours") -> dict:
    """A PyTorch state dict (names -> arrays, as torch would save it) for our checkpoint's weights."""
    model = ck.rebuild_model()
    rename = renamer(style, model)
    out = {}
    for key, value in model.state_dict().items():
        out[rename(key)] = value.astype(np.int64) if key.endswith("num_batches_tracked") else value
    return out
