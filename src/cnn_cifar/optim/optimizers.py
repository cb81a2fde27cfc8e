"""SGD, Adam and AdamW. They see only parameters (data + grad) and keep their own state.

An optimizer keeps its parameters as views into one flat data buffer and one flat gradient buffer per
dtype (``FlatParams``), and its state (momentum, moments) flat beside them: ``zero_grad`` is one fill and an
update a handful of whole-buffer operations, however many parameters the model has; on a GPU each update is
one fused kernel per buffer (``optim.kernels.sgd_update`` / ``adam_update``) instead of 8 launches per parameter.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .. import backend
from ..backend import Array, get_array_module
from ..nn import Parameter
from . import kernels


class FlatParams:
    """Parameters of one dtype as views into ``data`` and ``grad`` (1-D buffers), in order.

    A parameter whose array was replaced since (``load_state_dict``, ``Module.to``) is taken back in by
    ``adopt_replaced``: its values are copied into the buffer and it becomes a view again.
    """

    def __init__(self, params: list[Parameter]):
        xp = get_array_module(params[0].data)
        dtype = params[0].data.dtype
        self.params = params
        self.slices: list[slice] = []
        off = 0
        for p in params:
            self.slices.append(slice(off, off + p.size))
            off += p.size
        self.data = xp.empty(off, dtype=dtype)
        self.grad = xp.empty(off, dtype=dtype)
        self.state: dict[str, Array | None] = {}
        self._scratch: Array | None = None
        self._views: list[tuple[Array, Array]] = [(None, None)] * len(params)
        self._adopt(range(len(params)))

    def _adopt(self, indices: Iterable[int]) -> None:
        for i in indices:
            p, sl = self.params[i], self.slices[i]
            shape = p.data.shape
            self.data[sl] = p.data.reshape(-1)
            self.grad[sl] = p.grad.reshape(-1)
            p.data, p.grad = self.data[sl].reshape(shape), self.grad[sl].reshape(shape)
            self._views[i] = (p.data, p.grad)

    def adopt_replaced(self) -> None:
        stale = [i for i, (p, (d, g)) in enumerate(zip(self.params, self._views)) if p.data is not d or p.grad is not g]
        if stale:
            self._adopt(stale)

    def scratch(self) -> Array:
        """A buffer the size of the parameters, kept between steps but never saved: the output a fused kernel
        writes and nobody keeps (SGD's velocity without momentum)."""
        if self._scratch is None:
            self._scratch = get_array_module(self.data).zeros_like(self.data)
        return self._scratch

    def per_param(self, flat: Array | None) -> list[Array | None]:
        """A flat state buffer as per-parameter views (None stays None for each)."""
        return [None if flat is None else flat[sl].reshape(p.data.shape) for p, sl in zip(self.params, self.slices)]


class Optimizer:
    """Base: the parameters (flattened into ``groups``, one per dtype), the learning rate, and the state
    buffers named in ``STATE``, per group, flat (None until first used)."""

    STATE: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no parameters")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.lr = float(lr)
        self.steps = 0
        by_dtype: dict = {}
        for p in self.params:
            by_dtype.setdefault((get_array_module(p.data).__name__, np.dtype(p.data.dtype)), []).append(p)
        self.groups = [FlatParams(ps) for ps in by_dtype.values()]
        for g in self.groups:
            g.state = {k: None for k in self.STATE}

    def step(self, only_if: Array | None = None) -> None:
        """Update the parameters from their gradients. ``only_if``, a 0-d device bool array, makes the update
        conditional on the device (no host read): where it is false the parameters and state stay as they
        are. (The step count advances either way.)"""
        for g in self.groups:
            g.adopt_replaced()
        if only_if is not None and any(backend.is_host(g.data) for g in self.groups):
            if not bool(only_if):
                self.steps += 1
                return
            only_if = None
        self._update(only_if)
        self.steps += 1

    def _update(self, ok: Array | None = None) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for g in self.groups:
            g.adopt_replaced()
            g.grad.fill(0)

    def _state_arrays(self) -> dict[str, list]:
        """Per-parameter views of the state, in parameter order (what a checkpoint keeps)."""
        out: dict[str, list] = {k: [None] * len(self.params) for k in self.STATE}
        index = {id(p): i for i, p in enumerate(self.params)}
        for g in self.groups:
            for k in self.STATE:
                for p, view in zip(g.params, g.per_param(g.state[k])):
                    out[k][index[id(p)]] = view
        return out

    def state_dict(self) -> dict:
        """Plain data with host NumPy arrays (per-parameter state in parameter order)."""
        return {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                "hyper": self._hyper(),
                "state": {k: [None if a is None else backend.to_numpy(a).copy() for a in v]
                          for k, v in self._state_arrays().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')!r}, not {type(self).__name__}")
        index = {id(p): i for i, p in enumerate(self.params)}
        for key, arrays in state["state"].items():
            if key not in self.STATE:
                raise ValueError(f"optimizer state has an unknown entry '{key}'")
            if len(arrays) != len(self.params):
                raise ValueError(f"optimizer state has {len(arrays)} '{key}' entries for {len(self.params)} parameters")
            for i, a in enumerate(arrays):
                if a is not None and tuple(a.shape) != tuple(self.params[i].shape):
                    raise ValueError(f"optimizer state '{key}'[{i}] has shape {tuple(a.shape)}, parameter "
                                     f"has {self.params[i].shape}")
            for g in self.groups:
                mine = [arrays[index[id(p)]] for p in g.params]
                if all(a is None for a in mine):
                    g.state[key] = None
                    continue
                flat = get_array_module(g.data).zeros_like(g.data)
                for a, sl in zip(mine, g.slices):
                    if a is not None:
                        flat[sl] = backend.to_device(np.asarray(a).reshape(-1), g.data.dtype)
                g.state[key] = flat
        self.lr, self.steps = float(state["lr"]), int(state["steps"])

    def _hyper(self) -> dict:
        return {}


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form: v = mu*v + g; p -= lr*v), optional Nesterov, and L2 weight
    decay added to the gradient (coupled, as torch.optim.SGD); decay applies to all parameters."""

    STATE = ("velocity",)

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.9,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def _hyper(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, ok: Array | None = None) -> None:
        mu, wd, lr = self.momentum, self.weight_decay, self.lr
        for grp in self.groups:
            if not backend.is_host(grp.data) and (mu or ok is not None):     # GPU: one fused kernel
                if not mu:
                    v = grp.scratch()                       # (mu * v is 0: its old values do not matter)
                elif grp.state["velocity"] is None:
                    v = grp.state["velocity"] = get_array_module(grp.data).zeros_like(grp.data)
                else:
                    v = grp.state["velocity"]
                kernels.sgd_update(grp.grad, lr, mu, wd, self.nesterov, True if ok is None else ok, grp.data, v)
                continue
            g = grp.grad
            if wd:
                g = g + wd * grp.data
            if mu:
                v = grp.state["velocity"]
                if v is None:
                    v = grp.state["velocity"] = g.copy()
                else:
                    v *= mu
                    v += g
                g = g + mu * v if self.nesterov else v
            grp.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 added to the gradient (as torch.optim.Adam)."""

    STATE = ("m", "v")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        if weight_decay < 0 or eps <= 0:
            raise ValueError("Adam: weight_decay must be >= 0 and eps > 0")
        self.beta1, self.beta2, self.eps, self.weight_decay = float(b1), float(b2), float(eps), float(weight_decay)
        for grp in self.groups:
            grp.state = {"m": get_array_module(grp.data).zeros_like(grp.data),
                         "v": get_array_module(grp.data).zeros_like(grp.data)}

    def _hyper(self) -> dict:
        return {"betas": (self.beta1, self.beta2), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, ok: Array | None = None) -> None:
        self._adam_update(self.weight_decay, ok=ok)

    def _adam_update(self, l2: float, shrink: float = 1.0, ok: Array | None = None) -> None:
        """One Adam step with ``l2`` times the weights added to each gradient, after the weights are scaled by
        ``shrink`` (AdamW's decoupled decay; 1 for Adam)."""
        b1, b2, t = self.beta1, self.beta2, self.steps + 1
        step_size = self.lr / (1 - b1 ** t)
        corr2 = 1 - b2 ** t
        for grp in self.groups:
            m, v = grp.state["m"], grp.state["v"]
            if not backend.is_host(grp.data):                     # GPU: one fused kernel
                kernels.adam_update(grp.grad, step_size, b1, b2, corr2, self.eps, l2, shrink,
                                    True if ok is None else ok, grp.data, m, v)
                continue
            if shrink != 1.0:
                grp.data *= shrink
            g = grp.grad + l2 * grp.data if l2 else grp.grad
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = get_array_module(v).sqrt(v / corr2)
            denom += self.eps
            grp.data -= step_size * (m / denom)


ADAMW_DEFAULT_WEIGHT_DECAY = 1e-2
"""torch.optim.AdamW's default weight_decay: AdamW's here too, and train_cli's for --optimizer adamw."""


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW: each step first shrinks
    the weights, p *= 1 - lr * weight_decay, then takes the Adam step on the plain gradient."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = ADAMW_DEFAULT_WEIGHT_DECAY):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, ok: Array | None = None) -> None:
        self._adam_update(0.0, 1.0 - self.lr * self.weight_decay, ok=ok)


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(name: str, params: Iterable[Parameter], *, lr: float, momentum: float = 0.9,
                    nesterov: bool = False, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999)) -> Optimizer:
    """An optimizer by name (``sgd``, ``adam`` or ``adamw``) with PyTorch's hyper-parameter names."""
    if name == "sgd":
        return SGD(params, lr, momentum, nesterov, weight_decay)
    if name == "adam":
        return Adam(params, lr, betas, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr, betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
