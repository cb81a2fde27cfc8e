"""The random numbers dropout draws at training time: one seedable stream per process whose whole state
fits in a checkpoint, so ``--resume`` continues with exactly the masks a straight run would have drawn, on
either backend.

* NumPy arrays draw from a NumPy ``Generator`` (PCG64); its ``bit_generator.state`` is plain data.
* Device arrays draw from a counter-based stream: the i-th number of draw d is splitmix64 of
  (key + d * 2**32 + i), computed with ordinary array operations. Its state is two integers (key, draws).
  A CuPy generator could not be saved that way: its state is a large block of device memory, and
  creating one per draw would allocate and initialise that block every step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array

_state: dict[str, Any] = {"seed": None, "numpy": None, "key": None, "draws": 0, "rank": 0}

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_RANK_STRIDE = 1 << 100        # a rank's NumPy stream: the seed's, advanced by rank * 2**100 draws
_RANK_KEY = 1 << 56            # a rank's counter stream: key + rank * 2**56 (apart for 2**24 draws)
_PERIOD = 1 << 128


def _advance_ranks(gen: np.random.Generator, ranks: int) -> None:
    if ranks % (_PERIOD // _RANK_STRIDE):            # (advancing drops a half-used 64-bit draw: not for 0)
        gen.bit_generator.advance((ranks * _RANK_STRIDE) % _PERIOD)


def set_rank(rank: int) -> None:
    """Give this process the stream of data-parallel ``rank`` (0: the seed's own): every rank draws
    different dropout masks. The state saved and restored stays rank 0's: a resumed run continues rank 0's
    stream exactly and derives the others' from it (the same masks unless a half-used 64-bit draw of
    theirs was pending), with any number of ranks."""
    _ensure()
    _advance_ranks(_state["numpy"], rank - _state["rank"])
    _state["rank"] = rank


def manual_seed(seed: int | None) -> None:
    """Restart both streams from ``seed`` (None: fresh entropy)."""
    ss = np.random.SeedSequence(seed)
    _state.update(seed=seed, numpy=np.random.Generator(np.random.PCG64(ss)),
                  key=int(ss.generate_state(1, np.uint64)[0]), draws=0)
    _advance_ranks(_state["numpy"], _state.get("rank", 0))


def _ensure() -> None:
    if _state["numpy"] is None:
        manual_seed(_state["seed"])


def generator() -> np.random.Generator:
    """The NumPy generator (created unseeded on first use)."""
    _ensure()
    return _state["numpy"]


def uniform(xp: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> Array:
    """Uniform numbers in [0, 1) of ``shape`` as an array of ``xp`` (numpy or cupy), from the stream of
    that backend."""
    _ensure()
    if xp is np:
        return _state["numpy"].random(shape, dtype=dtype)
    n = 1
    for d in shape:
        n *= int(d)
    start = (_state["key"] + _state["rank"] * _RANK_KEY + (_state["draws"] << 32)) & 0xFFFFFFFFFFFFFFFF
    _state["draws"] += 1
    z = xp.arange(1, n + 1, dtype=xp.uint64)
    z *= xp.uint64(_GOLDEN)
    z += xp.uint64(start)
    z ^= z >> xp.uint64(30)
    z *= xp.uint64(_MIX1)
    z ^= z >> xp.uint64(27)
    z *= xp.uint64(_MIX2)
    z ^= z >> xp.uint64(31)
    u = (z >> xp.uint64(40)).astype(dtype)                # the top 24 bits: exact in float32
    u *= 1.0 / (1 << 24)
    return u.reshape(shape)


def get_state() -> dict:
    """Plain-data state of both streams (what a checkpoint keeps)."""
    _ensure()
    numpy_state = _state["numpy"].bit_generator.state
    if _state["rank"]:                                   # rank 0's stream: the one a checkpoint keeps
        gen = np.random.Generator(np.random.PCG64())
        gen.bit_generator.state = numpy_state
        _advance_ranks(gen, -_state["rank"])
        numpy_state = gen.bit_generator.state
    return {"numpy": numpy_state, "key": _state["key"], "draws": _state["draws"], "seed": _state["seed"]}


def set_state(state: dict | None) -> None:
    """Restore a state from get_state(). Older checkpoints saved only the NumPy generator's state."""
    if not state:
        return
    _ensure()
    if "bit_generator" in state:                         # the NumPy generator's own state (older format)
        _state["numpy"].bit_generator.state = state
        return
    if state.get("numpy") is not None:
        _state["numpy"].bit_generator.state = state["numpy"]
        _advance_ranks(_state["numpy"], _state["rank"])
    if state.get("key") is not None:
        _state["key"], _state["draws"] = int(state["key"]), int(state.get("draws", 0))
    _state["seed"] = state.get("seed", _state["seed"])
