"""SGD, Adam and AdamW. They see only parameter groups (PyTorch's ``param_groups``: parameters with their own
hyper-parameters) and gradients, and keep their own state.

An optimizer keeps its parameters as views into one flat data buffer and one flat gradient buffer per
group and dtype (``FlatParams``), and its state (momentum, moments) flat beside them: ``zero_grad`` is one fill and an
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
        self.group: dict = {}                     # the parameter group these parameters belong to
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


def param_groups(params: Iterable[Parameter] | Iterable[dict], defaults: dict) -> list[dict]:
    """PyTorch's ``param_groups`` from an optimizer's first argument: parameters (one group), or dicts with
    ``params`` and any of the optimizer's hyper-parameters (the others from ``defaults``). Each group also
    records its ``initial_lr`` (what ``Optimizer.lr`` scales). A group naming no parameter, a parameter in two
    groups or an unknown key is a ValueError."""
    items = list(params)
    if items and all(isinstance(g, dict) for g in items):
        specs = items
    elif any(isinstance(g, dict) for g in items):
        raise ValueError("give the optimizer parameters or parameter groups (dicts), not a mix of both")
    else:
        specs = [{"params": items}]
    groups, seen = [], {}
    for i, spec in enumerate(specs):
        unknown = sorted(set(spec) - {"params", *defaults})
        if unknown:
            raise ValueError(f"parameter group {i} has unknown keys {unknown}; an optimizer group takes params "
                             f"and {', '.join(defaults)}")
        ps = list(spec.get("params", ()))
        if isinstance(spec.get("params"), Parameter):
            ps = [spec["params"]]
        if not ps:
            raise ValueError(f"parameter group {i} names no parameter")
        for p in ps:
            if not isinstance(p, Parameter):
                raise ValueError(f"parameter group {i} holds a {type(p).__name__}, not a Parameter")
            if id(p) in seen:
                raise ValueError(f"a parameter {p.shape} is in parameter groups {seen[id(p)]} and {i}: give each "
                                 f"parameter once")
            seen[id(p)] = i
        group = {**defaults, **{k: v for k, v in spec.items() if k != "params"}, "params": ps}
        group["initial_lr"] = group["lr"]
        groups.append(group)
    return groups


class Optimizer:
    """Base: PyTorch's ``param_groups`` (each a dict of ``params`` and its own hyper-parameters), the
    parameters of each group and dtype flattened into ``buffers`` (``FlatParams``), and the state buffers
    named in ``STATE``, flat beside them (None until first used).

    ``lr`` is the schedule's handle, as PyTorch's LambdaLR: setting it to ``f * defaults["lr"]`` sets every
    group's lr to ``f`` times its own initial lr, so groups keep their ratios. A parameter whose
    ``requires_grad`` is False when a step is taken is left alone, state included (as PyTorch skips a
    parameter without a gradient)."""

    STATE: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], defaults: dict):
        name = type(self).__name__
        self.defaults = dict(defaults)
        self.param_groups = param_groups(params, self.defaults)
        self.params = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"{name} got no parameters")
        for i, g in enumerate(self.param_groups):
            if not g["lr"] > 0:
                raise ValueError(f"{name}: lr must be > 0, got {g['lr']}" + (f" in parameter group {i}" if i else ""))
            self._check(g)
        self._lr = float(self.defaults["lr"])
        self.steps = 0
        by_key: dict = {}
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                by_key.setdefault((gi, get_array_module(p.data).__name__, np.dtype(p.data.dtype)), []).append(p)
        self.buffers = []
        for (gi, _, _), ps in by_key.items():
            buf = FlatParams(ps)
            buf.group = self.param_groups[gi]
            buf.state = {k: None for k in self.STATE}
            self.buffers.append(buf)

    def _check(self, group: dict) -> None:
        """Raise ValueError for a group's hyper-parameters that make no sense (a subclass's own checks)."""

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's ``lr`` argument as last set; each group's is in param_groups."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        factor = float(value) / self.defaults["lr"]
        for g in self.param_groups:
            g["lr"] = g["initial_lr"] * factor
        self._lr = float(value)

    def step(self, only_if: Array | None = None) -> None:
        """Update the parameters from their gradients. ``only_if``, a 0-d device bool array, makes the update
        conditional on the device (no host read): where it is false the parameters and state stay as they
        are. (The step count advances either way.)"""
        for b in self.buffers:
            b.adopt_replaced()
        if only_if is not None and any(backend.is_host(b.data) for b in self.buffers):
            if not bool(only_if):
                self.steps += 1
                return
            only_if = None
        frozen = self._frozen()
        self._update(only_if)
        for buf, sl, kept in frozen:
            buf.data[sl] = kept[0]
            for k, v in zip(self.STATE, kept[1:]):
                if buf.state[k] is not None:
                    buf.state[k][sl] = v if v is not None else 0
        self.steps += 1

    def _frozen(self) -> list[tuple[FlatParams, slice, tuple]]:
        """The values of the parameters that do not train now (``requires_grad`` False) and their state, to put
        back after the update."""
        out = []
        for buf in self.buffers:
            for p, sl in zip(buf.params, buf.slices):
                if not p.requires_grad:
                    out.append((buf, sl, (buf.data[sl].copy(),
                                          *(None if buf.state[k] is None else buf.state[k][sl].copy()
                                            for k in self.STATE))))
        return out

    def _update(self, ok: Array | None = None) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for b in self.buffers:
            b.adopt_replaced()
            b.grad.fill(0)

    def _state_arrays(self) -> dict[str, list]:
        """Per-parameter views of the state, in parameter order (what a checkpoint keeps)."""
        out: dict[str, list] = {k: [None] * len(self.params) for k in self.STATE}
        index = {id(p): i for i, p in enumerate(self.params)}
        for b in self.buffers:
            for k in self.STATE:
                for p, view in zip(b.params, b.per_param(b.state[k])):
                    out[k][index[id(p)]] = view
        return out

    def _group_layout(self) -> list[dict]:
        """Each group's hyper-parameters with its parameters as indices in parameter order (PyTorch's form)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        return [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                for g in self.param_groups]

    def state_dict(self) -> dict:
        """Plain data with host NumPy arrays (per-parameter state in parameter order) and the parameter
        groups' hyper-parameters."""
        return {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                "hyper": self._hyper(), "param_groups": self._group_layout(),
                "state": {k: [None if a is None else backend.to_numpy(a).copy() for a in v]
                          for k, v in self._state_arrays().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')!r}, not {type(self).__name__}")
        saved_groups = state.get("param_groups")
        if saved_groups is not None:
            mine = self._group_layout()
            if [g["params"] for g in saved_groups] != [g["params"] for g in mine]:
                raise ValueError(f"optimizer state has {len(saved_groups)} parameter group(s) of "
                                 f"{[len(g['params']) for g in saved_groups]} parameters; this optimizer has "
                                 f"{len(mine)} of {[len(g['params']) for g in mine]}")
        for key, arrays in state["state"].items():
            if key not in self.STATE:
                raise ValueError(f"optimizer state has an unknown entry '{key}'")
            if len(arrays) != len(self.params):
                raise ValueError(f"optimizer state has {len(arrays)} '{key}' entries for {len(self.params)} parameters")
            for i, a in enumerate(arrays):
                if a is not None and tuple(a.shape) != tuple(self.params[i].shape):
                    raise ValueError(f"optimizer state '{key}'[{i}] has shape {tuple(a.shape)}, parameter "
                                     f"has {self.params[i].shape}")
            index = {id(p): i for i, p in enumerate(self.params)}
            for b in self.buffers:
                mine = [arrays[index[id(p)]] for p in b.params]
                if all(a is None for a in mine):
                    b.state[key] = None
                    continue
                flat = get_array_module(b.data).zeros_like(b.data)
                for a, sl in zip(mine, b.slices):
                    if a is not None:
                        flat[sl] = backend.to_device(np.asarray(a).reshape(-1), b.data.dtype)
                b.state[key] = flat
        # The groups' hyper-parameters stay this optimizer's (a resumed run may change them by its settings);
        # the schedule's lr is restored, each group scaled from its own initial lr.
        self.lr, self.steps = float(state["lr"]), int(state["steps"])

    def _hyper(self) -> dict:
        """The optimizer's own hyper-parameters (its defaults but the lr), as a checkpoint records them."""
        return {k: v for k, v in self.defaults.items() if k != "lr"}


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form: v = mu*v + g; p -= lr*v), optional Nesterov, and L2 weight
    decay added to the gradient (coupled, as torch.optim.SGD); each parameter group may set its own ``lr``,
    ``momentum``, ``nesterov`` and ``weight_decay``."""

    STATE = ("velocity",)

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], lr: float, momentum: float = 0.9,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, {"lr": float(lr), "momentum": float(momentum), "nesterov": bool(nesterov),
                                  "weight_decay": float(weight_decay)})

    def _check(self, g: dict) -> None:
        if g["momentum"] < 0 or g["weight_decay"] < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {g['momentum']}, {g['weight_decay']}")
        if g["nesterov"] and g["momentum"] == 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")

    @property
    def momentum(self) -> float:
        return self.defaults["momentum"]

    @property
    def nesterov(self) -> bool:
        return self.defaults["nesterov"]

    @property
    def weight_decay(self) -> float:
        return self.defaults["weight_decay"]

    def _update(self, ok: Array | None = None) -> None:
        for buf in self.buffers:
            grp = buf.group
            mu, wd, lr, nesterov = grp["momentum"], grp["weight_decay"], grp["lr"], grp["nesterov"]
            if not backend.is_host(buf.data) and (mu or ok is not None):     # GPU: one fused kernel
                if not mu:
                    v = buf.scratch()                       # (mu * v is 0: its old values do not matter)
                elif buf.state["velocity"] is None:
                    v = buf.state["velocity"] = get_array_module(buf.data).zeros_like(buf.data)
                else:
                    v = buf.state["velocity"]
                kernels.sgd_update(buf.grad, lr, mu, wd, nesterov, True if ok is None else ok, buf.data, v)
                continue
            g = buf.grad
            if wd:
                g = g + wd * buf.data
            if mu:
                v = buf.state["velocity"]
                if v is None:
                    v = buf.state["velocity"] = g.copy()
                else:
                    v *= mu
                    v += g
                g = g + mu * v if nesterov else v
            buf.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 added to the gradient (as torch.optim.Adam).
    Each parameter group may set its own ``lr``, ``betas``, ``eps`` and ``weight_decay``."""

    STATE = ("m", "v")

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": float(lr), "betas": tuple(float(b) for b in betas), "eps": float(eps),
                                  "weight_decay": float(weight_decay)})
        for buf in self.buffers:
            buf.state = {"m": get_array_module(buf.data).zeros_like(buf.data),
                         "v": get_array_module(buf.data).zeros_like(buf.data)}

    def _check(self, g: dict) -> None:
        b1, b2 = g["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {g['betas']}")
        if g["weight_decay"] < 0 or g["eps"] <= 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0 and eps > 0")

    @property
    def beta1(self) -> float:
        return self.defaults["betas"][0]

    @property
    def beta2(self) -> float:
        return self.defaults["betas"][1]

    @property
    def eps(self) -> float:
        return self.defaults["eps"]

    @property
    def weight_decay(self) -> float:
        return self.defaults["weight_decay"]

    def _update(self, ok: Array | None = None) -> None:
        for buf in self.buffers:
            self._adam_update(buf, buf.group["weight_decay"], ok=ok)

    def _adam_update(self, buf: FlatParams, l2: float, shrink: float = 1.0, ok: Array | None = None) -> None:
        """One Adam step of one buffer with ``l2`` times the weights added to each gradient, after the weights
        are scaled by ``shrink`` (AdamW's decoupled decay; 1 for Adam)."""
        grp = buf.group
        (b1, b2), eps, t = grp["betas"], grp["eps"], self.steps + 1
        step_size = grp["lr"] / (1 - b1 ** t)
        corr2 = 1 - b2 ** t
        m, v = buf.state["m"], buf.state["v"]
        if not backend.is_host(buf.data):                     # GPU: one fused kernel
            kernels.adam_update(buf.grad, step_size, b1, b2, corr2, eps, l2, shrink,
                                True if ok is None else ok, buf.data, m, v)
            return
        if shrink != 1.0:
            buf.data *= shrink
        g = buf.grad + l2 * buf.data if l2 else buf.grad
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = get_array_module(v).sqrt(v / corr2)
        denom += eps
        buf.data -= step_size * (m / denom)


ADAMW_DEFAULT_WEIGHT_DECAY = 1e-2
"""torch.optim.AdamW's default weight_decay: AdamW's here too, and train_cli's for --optimizer adamw."""


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW: each step first shrinks
    the weights, p *= 1 - lr * weight_decay, then takes the Adam step on the plain gradient."""

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = ADAMW_DEFAULT_WEIGHT_DECAY):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, ok: Array | None = None) -> None:
        for buf in self.buffers:
            self._adam_update(buf, 0.0, 1.0 - buf.group["lr"] * buf.group["weight_decay"], ok=ok)


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(name: str, params: Iterable[Parameter] | Iterable[dict], *, lr: float, momentum: float = 0.9,
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
