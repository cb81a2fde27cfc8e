"""The checkpoint: one type, one writer (atomic pickle of plain data and host NumPy arrays) and one
reader (through the restricted unpickler)."""
from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import safe_pickle
from ..models import build_model, options_of
from ..nn import Linear, Module
from .atomic import atomic_write

FORMAT = "cnn-cifar-10/checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe, or for another model (the message says which)."""


class ModelMismatch(CheckpointError):
    """A checkpoint holds another model than the one asked for (``found``)."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found


class AmbiguousCheckpoint(CheckpointError):
    """A folder holds the best checkpoints of several models: which one is meant must be said."""


@dataclass
class Checkpoint:
    """Everything a run saves: the model, and for ``--resume`` the optimizer, schedules, random streams,
    position (epoch, and step inside it), history, run settings, and the state of the hooks and the loss
    scaler.

    ``state_dict`` holds the weights that were evaluated: the model's own, or those a hook provided (EMA's
    average), in which case ``training_weights`` holds the weights training continues from."""
    model: str
    state_dict: dict
    epoch: int = 0                       # epochs completed
    step: int = 0                        # steps completed inside the next epoch (after Ctrl-C)
    model_config: dict = field(default_factory=dict)    # what build_model needs: name, num_classes, dropout
    optimizer: dict | None = None
    training_weights: dict | None = None  # where they differ from state_dict (a hook provided those)
    hooks: dict = field(default_factory=dict)           # each hook's state, by its name (hooks.Hook.state_dict)
    grad_scaler: dict | None = None      # mixed precision's loss scale and growth counter
    schedule: dict = field(default_factory=dict)        # lr and dropout schedules, current dropout_p
    partial: dict | None = None          # running sums of an interrupted epoch
    best_accuracy: float = -1.0
    history: list = field(default_factory=list)
    rng: dict = field(default_factory=dict)             # data stream, its epoch-start state, dropout stream
    args: dict = field(default_factory=dict)            # the run settings (RunConfig.run_settings())
    dataset: str | None = None
    classes: list | None = None
    mean: list | None = None             # the input normalisation the weights expect (per channel, on [0, 1]
    std: list | None = None              # pixels); None: the dataset's own statistics

    def normalization(self, default_mean: tuple, default_std: tuple) -> tuple[tuple, tuple]:
        """(mean, std) to feed these weights: the recorded ones, else the given defaults (the dataset's)."""
        if self.mean is None or self.std is None:
            return tuple(default_mean), tuple(default_std)
        return tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)

    @property
    def num_classes(self) -> int | None:
        n = self.model_config.get("num_classes")
        return None if n is None else int(n)

    def rebuild_model(self, num_classes: int | None = None, source: str = "checkpoint") -> Module:
        """The model these weights are for (architecture, class count, dropout and builder options as
        recorded), with the weights loaded; a CheckpointError names what does not fit. ``source`` names the
        checkpoint in that message."""
        cfg = self.model_config
        model = build_model(self.model, num_classes=num_classes or self.num_classes or 10,
                            dropout=cfg.get("dropout", 0.0), **options_of(cfg))
        try:
            model.load_state_dict(self.state_dict)
        except ValueError as exc:
            raise CheckpointError(f"{source} does not fit model '{self.model}': {exc}") from None
        return model

    def weights_only(self) -> "Checkpoint":
        """What a published model needs: weights and buffers, model config, normalisation, class names and the
        dataset; no optimizer state, random streams or history (a resumed run would not be exact)."""
        return Checkpoint(model=self.model, state_dict=self.state_dict, epoch=self.epoch,
                          model_config=dict(self.model_config), best_accuracy=self.best_accuracy,
                          args=dict(self.args), dataset=self.dataset, classes=self.classes, mean=self.mean,
                          std=self.std)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **_plain(asdict(self))}

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> "Checkpoint":
        for key in ("model", "state_dict", "epoch"):
            if key not in d:
                raise CheckpointError(f"{source} is incomplete: no '{key}' entry")
        d = _upgraded(d)
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise CheckpointError(f"{source} is malformed: {exc}") from None


def _upgraded(d: dict) -> dict:
    """A checkpoint in today's layout. Files written before the hooks kept their own state (up to 499d642)
    carried EMA's state (``decay``, ``updates``) and the training weights in ``optimizer["ema"]``, and the loss
    scaler's in ``optimizer["grad_scaler"]``; they move to ``hooks["ema"]``, ``training_weights`` and
    ``grad_scaler``. The given dict is left as it was."""
    optimizer = d.get("optimizer")
    if not isinstance(optimizer, dict) or not {"ema", "grad_scaler"} & optimizer.keys():
        return d
    optimizer = dict(optimizer)
    d = {**d, "optimizer": optimizer}
    ema = optimizer.pop("ema", None)
    if ema is not None:
        ema = dict(ema)
        d["training_weights"] = ema.pop("training_weights", None)
        d["hooks"] = {**d.get("hooks", {}), "ema": ema}
    scaler = optimizer.pop("grad_scaler", None)
    if scaler is not None:
        d["grad_scaler"] = scaler
    return d


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


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint | dict) -> Path:
    """Write a checkpoint atomically: temp file in the same folder, fsync, rename. A dict is read as a
    Checkpoint's fields first, so only what the reader accepts is ever written."""
    if isinstance(checkpoint, dict):
        checkpoint = Checkpoint.from_dict(checkpoint)
    data = checkpoint.to_dict()
    return atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))


def load_checkpoint(path: str | os.PathLike, expected_model: str | None = None) -> Checkpoint:
    """Read a checkpoint; refuses unsafe pickles, foreign files and (if given) other models."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = safe_pickle.load(f)
    except safe_pickle.UnsafePickleError as exc:
        raise CheckpointError(f"refusing to load {path}: not a cnn-cifar-10 checkpoint ({exc})") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnn-cifar-10 checkpoint")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {raw.get('version')}, this tool reads {VERSION}")
    ck = Checkpoint.from_dict(raw, source=str(path))
    if expected_model is not None and ck.model != expected_model:
        raise ModelMismatch(f"{path} holds a '{ck.model}' model, not '{expected_model}'", ck.model)
    return ck


def find_checkpoint(path: str | os.PathLike, model: str | None = None) -> Path:
    """``path`` itself for a file; for a folder, the ``<model>_best.pkl`` inside it (the only ``*_best.pkl``
    when ``model`` is not given). A folder without one is a CheckpointError that lists what it holds."""
    path = Path(path)
    if not path.is_dir():
        return path
    if model is not None:
        best = path / f"{model}_best.pkl"
        if best.is_file():
            return best
        candidates = []
    else:
        candidates = sorted(path.glob("*_best.pkl"))
        if len(candidates) == 1:
            return candidates[0]
    found = sorted(p.name for p in path.glob("*.pkl"))
    if len(candidates) > 1:
        raise AmbiguousCheckpoint(f"{path} holds several best checkpoints "
                                  f"({', '.join(p.name for p in candidates)}): name the model")
    want = f"{model}_best.pkl" if model else "a *_best.pkl"
    raise CheckpointError(f"no {want} in {path}" + (f" (it holds {', '.join(found)})" if found else " (no .pkl files)"))


def transfer_weights(model: Module, ck: Checkpoint) -> list[str]:
    """Load ``ck``'s weights into ``model`` (a new run starting from them). The final classifier's tensors may
    differ in shape (another class count): those keep the model's fresh initialisation and their names are
    returned. Any other difference is a CheckpointError naming the tensor."""
    heads = [name for name, m in model.named_modules() if isinstance(m, Linear)]
    head = heads[-1] if heads else None
    own = model.state_dict()
    kept, fresh = {}, []
    for key, value in own.items():
        theirs = ck.state_dict.get(key)
        if theirs is None:
            raise CheckpointError(f"the checkpoint has no '{key}' for {ck.model}")
        if tuple(np.shape(theirs)) != tuple(value.shape):
            if head is not None and key.rsplit(".", 1)[0] == head:
                fresh.append(key)
                continue
            raise CheckpointError(f"'{key}' has shape {tuple(np.shape(theirs))} in the checkpoint, the model needs "
                                  f"{tuple(value.shape)}")
        kept[key] = theirs
    extra = [k for k in ck.state_dict if k not in own]
    if extra:
        raise CheckpointError(f"the checkpoint has tensors the model does not: {', '.join(extra[:5])}")
    model.load_state_dict({**own, **kept})
    return fresh
