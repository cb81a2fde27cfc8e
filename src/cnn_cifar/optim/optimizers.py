"""SGD, Adam and AdamW. They see only parameters (data + grad) and keep their own per-parameter state."""
from __future__ import annotations

from typing import Iterable

from .. import backend
from ..backend import Array
from ..nn import Parameter


class Optimizer:
    """Base: holds the parameter list, the learning rate and per-parameter state arrays."""

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no parameters")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.lr = float(lr)
        self.steps = 0

    def step(self) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def _state_arrays(self) -> dict[str, list]:
        return {}

    def state_dict(self) -> dict:
        """Plain data with host NumPy arrays (per-parameter state in parameter order)."""
        return {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                "hyper": self._hyper(),
                "state": {k: [None if a is None else backend.to_numpy(a).copy() for a in v]
                          for k, v in self._state_arrays().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')!r}, not {type(self).__name__}")
        self.lr, self.steps = float(state["lr"]), int(state["steps"])
        for key, arrays in state["state"].items():
            own = self._state_arrays()[key]
            if len(arrays) != len(own):
                raise ValueError(f"optimizer state has {len(arrays)} '{key}' entries for {len(own)} parameters")
            for i, a in enumerate(arrays):
                if a is not None and tuple(a.shape) != tuple(self.params[i].shape):
                    raise ValueError(f"optimizer state '{key}'[{i}] has shape {tuple(a.shape)}, parameter "
                                     f"has {self.params[i].shape}")
                own[i] = None if a is None else backend.to_device(a, self.params[i].data.dtype)

    def _hyper(self) -> dict:
        return {}


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form: v = mu*v + g; p -= lr*v), optional Nesterov, and L2 weight
    decay added to the gradient (coupled, as torch.optim.SGD); decay applies to all parameters."""

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.9,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)
        self.velocity: list[Array | None] = [None] * len(self.params)

    def _hyper(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _state_arrays(self) -> dict[str, list]:
        return {"velocity": self.velocity}

    def step(self) -> None:
        mu, wd, lr = self.momentum, self.weight_decay, self.lr
        for i, p in enumerate(self.params):
            g = p.grad
            if wd:
                g = g + wd * p.data
            if mu:
                v = self.velocity[i]
                if v is None:
                    v = self.velocity[i] = g.copy()
                else:
                    v *= mu
                    v += g
                g = g + mu * v if self.nesterov else v
            p.data -= lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 added to the gradient (as torch.optim.Adam)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        if weight_decay < 0 or eps <= 0:
            raise ValueError("Adam: weight_decay must be >= 0 and eps > 0")
        self.beta1, self.beta2, self.eps, self.weight_decay = float(b1), float(b2), float(eps), float(weight_decay)
        xp = backend.xp
        self.m = [xp.zeros_like(p.data) for p in self.params]
        self.v = [xp.zeros_like(p.data) for p in self.params]

    def _hyper(self) -> dict:
        return {"betas": (self.beta1, self.beta2), "eps": self.eps, "weight_decay": self.weight_decay}

    def _state_arrays(self) -> dict[str, list]:
        return {"m": self.m, "v": self.v}

    def step(self) -> None:
        self._adam_update(self.weight_decay)

    def _adam_update(self, l2: float) -> None:
        """One Adam step with ``l2`` times the weights added to each gradient."""
        self.steps += 1
        b1, b2, t = self.beta1, self.beta2, self.steps
        step_size = self.lr / (1 - b1 ** t)
        corr2 = 1 - b2 ** t
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad + l2 * p.data if l2 else p.grad
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = backend.get_array_module(v).sqrt(v / corr2)
            denom += self.eps
            p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW: each step first shrinks
    the weights, p *= 1 - lr * weight_decay, then takes the Adam step on the plain gradient. PyTorch's
    default weight_decay, 1e-2, is this class's default too."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)

    def step(self) -> None:
        if self.weight_decay:
            shrink = 1.0 - self.lr * self.weight_decay
            for p in self.params:
                p.data *= shrink
        self._adam_update(0.0)


OPTIMIZERS = ("sgd", "adam", "adamw")
ADAMW_DEFAULT_WEIGHT_DECAY = 1e-2


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
