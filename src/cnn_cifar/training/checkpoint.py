"""One checkpoint format (a pickle of plain data and host NumPy arrays), saved atomically and loaded
through the restricted unpickler."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .. import safe_pickle
from .atomic import atomic_write

FORMAT = "cnn-cifar-10/checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe, or for another model (the message says which)."""


def _plain(obj: Any) -> Any:
    """Turn OrderedDicts, tuples, Paths and NumPy scalars into plain builtins (arrays stay arrays)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write payload (plus format/version) to path atomically: temp file in the same folder, fsync, rename."""
    data = {"format": FORMAT, "version": VERSION, **_plain(payload)}
    return atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))


def load_checkpoint(path: str | os.PathLike, expected_model: str | None = None) -> dict:
    """Read a checkpoint; refuses unsafe pickles, foreign files and (if given) other models."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            ck = safe_pickle.load(f)
    except safe_pickle.UnsafePickleError as exc:
        raise CheckpointError(f"refusing to load {path}: not a cnn-cifar-10 checkpoint ({exc})") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnn-cifar-10 checkpoint")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ck.get('version')}, this tool reads {VERSION}")
    for key in ("model", "state_dict", "epoch"):
        if key not in ck:
            raise CheckpointError(f"{path} is incomplete: no '{key}' entry")
    if expected_model is not None and ck["model"] != expected_model:
        raise CheckpointError(f"{path} holds a '{ck['model']}' model, not '{expected_model}' "
                              f"(use --model {ck['model']})")
    return ck
