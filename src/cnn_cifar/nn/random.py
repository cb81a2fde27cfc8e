"""The random stream used at training time by dropout layers (one per process, seedable, saveable)."""
from __future__ import annotations

from typing import Any

from .. import backend

_state: dict[str, Any] = {"gen": None, "backend": None, "seed": None}


def manual_seed(seed: int | None) -> None:
    """Restart the stream from ``seed`` on the active backend."""
    _state["gen"] = backend.xp.random.default_rng(seed)
    _state["backend"] = backend.name
    _state["seed"] = seed


def generator() -> Any:   # numpy.random.Generator or cupy.random.Generator
    """The active backend's generator (created unseeded on first use or after a backend switch)."""
    if _state["gen"] is None or _state["backend"] != backend.name:
        manual_seed(_state["seed"])
    return _state["gen"]


def get_state() -> dict | None:
    """Plain-data state of the stream (NumPy only; CuPy streams are not saved)."""
    gen = generator()
    if backend.name == "numpy":
        return gen.bit_generator.state
    return None


def set_state(state: dict | None) -> None:
    """Restore a state from get_state(); ignored when None or on CuPy."""
    if state is not None and backend.name == "numpy":
        generator().bit_generator.state = state
