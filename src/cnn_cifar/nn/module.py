"""Parameter, Module and Sequential: the tree that layers and models are built from."""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from .. import backend
from ..backend import Array


class Parameter:
    """A trainable array (``data``) and its accumulated gradient (``grad``), same shape and dtype.

    ``requires_grad`` False freezes it, as in PyTorch: optimizers leave it (and its state) alone, and a layer
    may skip computing its gradient. It still counts among the model's parameters and is saved with them."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: Array, requires_grad: bool = True):
        self.data = data
        self.grad = backend.get_array_module(data).zeros_like(data)
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()        # per thread, as PyTorch's grad mode: one thread's no_grad leaves the others'


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this block layers keep nothing for backward (inference saves memory); in this thread only."""
    prev, _grad_mode.enabled = _grad_mode.enabled, False
    try:
        yield
    finally:
        _grad_mode.enabled = prev


def grad_enabled() -> bool:
    """Whether forward passes in this thread should keep what backward needs."""
    return _grad_mode.enabled


def _join(prefix: str, key: str) -> str:
    """Dotted name of ``key`` under ``prefix`` (state-dict keys, module paths)."""
    return f"{prefix}.{key}" if prefix else key


class Module:
    """Base class: a forward that saves what backward needs, and a backward that returns dx.

    Attributes that are Parameters or Modules are registered automatically (as in PyTorch);
    buffers (non-trained state such as BN running statistics) via ``register_buffer``.

    What a layer keeps for backward goes through one mechanism: ``forward`` calls
    ``save_for_backward(...)`` (which keeps nothing under ``no_grad``) and ``backward`` calls
    ``saved()``, which hands the values back once and raises the same clear error for every layer when
    there is nothing to hand back.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_path", "")
        object.__setattr__(self, "_saved", None)

    # -- registration ---------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[key] = value
        elif isinstance(value, Module):
            self._modules[key] = value
            value._set_path(_join(self._path, key))
        elif key in self._buffers:
            self._buffers[key] = value
            return
        object.__setattr__(self, key, value)

    def __getattr__(self, key: str) -> Any:
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and key in buffers:
            return buffers[key]
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def register_buffer(self, key: str, value: Any) -> None:
        """Register persistent non-trained state (saved in state_dict)."""
        self._buffers[key] = value

    def _set_path(self, path: str) -> None:
        object.__setattr__(self, "_path", path)
        for key, child in self._modules.items():
            child._set_path(_join(path, key))

    @property
    def label(self) -> str:
        """Type and dotted position in the model, for error messages."""
        return f"{type(self).__name__} '{self._path}'" if self._path else type(self).__name__

    # -- computation ----------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array | None:
        raise NotImplementedError

    def __call__(self, x: Array, *args: Any, **kwargs: Any) -> Array:
        return self.forward(x, *args, **kwargs)

    def save_for_backward(self, *values: Any) -> None:
        """Keep ``values`` for the next backward, or nothing when gradients are disabled (``no_grad``)."""
        object.__setattr__(self, "_saved", values if _grad_mode.enabled else None)

    def saved(self) -> tuple:
        """Take back what the last forward saved (once); a clear RuntimeError when there is nothing."""
        values = self._saved
        if values is None:
            raise RuntimeError(f"{self.label}: backward called without a forward that kept what it needs "
                               f"(run forward with gradients enabled, once per backward)")
        object.__setattr__(self, "_saved", None)
        return values

    @property
    def has_saved(self) -> bool:
        """Whether a forward's saved values are waiting for backward."""
        return self._saved is not None

    # -- traversal --------------------------------------------------------------------
    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for key, child in self._modules.items():
            yield from child.named_modules(_join(prefix, key))

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, mod in self.named_modules(prefix):
            for key, p in mod._parameters.items():
                yield _join(name, key), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, mod in self.named_modules(prefix):
            for key, b in mod._buffers.items():
                yield _join(name, key), b

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    # -- dtype / device ---------------------------------------------------------------
    def to(self, dtype: Any = None) -> "Module":
        """Move every parameter and buffer to the active backend, cast to ``dtype`` if given."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = backend.to_device(backend.to_numpy(p.data), dtype if dtype is not None else p.data.dtype)
                p.grad = backend.xp.zeros_like(p.data)
            for key, b in list(m._buffers.items()):
                bdt = dtype if (dtype is not None and np.dtype(b.dtype).kind == "f") else b.dtype
                m._buffers[key] = backend.to_device(backend.to_numpy(b), bdt)
        return self

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted names to host NumPy copies of every parameter and buffer."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, mod in self.named_modules():
            for key, p in mod._parameters.items():
                out[_join(name, key)] = backend.to_numpy(p.data).copy()
            for key, b in mod._buffers.items():
                out[_join(name, key)] = backend.to_numpy(b).copy()
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this model; with strict, keys and shapes must match exactly."""
        own: dict[str, tuple[Module, str, bool]] = {}
        for name, mod in self.named_modules():
            for key in mod._parameters:
                own[_join(name, key)] = (mod, key, True)
            for key in mod._buffers:
                own[_join(name, key)] = (mod, key, False)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        for k, (mod, key, is_param) in own.items():
            if k not in state:
                continue
            value = np.asarray(state[k])
            current = mod._parameters[key].data if is_param else mod._buffers[key]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: '{k}' ({mod.label}) has shape "
                    f"{tuple(current.shape)} but the state dict gives {tuple(value.shape)}")
            arr = backend.to_device(value, current.dtype)
            if is_param:
                mod._parameters[key].data = arr.copy() if arr is value else arr
            else:
                mod._buffers[key] = arr.copy() if arr is value else arr

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for key, child in self._modules.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({key}): {sub}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x: Array) -> Array:
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, dy: Array) -> Array | None:
        for m in reversed(self._modules.values()):
            if dy is None:                  # nothing before this point trains (``skip_input_gradient``)
                break
            dy = m.backward(dy)
        return dy
