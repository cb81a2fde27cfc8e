"""Lookahead over the weights, the schedule of the fast CIFAR-10 recipes (Zhang et al. 2019; Keller Jordan's
airbench): a slow copy of the weights that the training weights are pulled back to every few steps."""
from __future__ import annotations

from collections import OrderedDict

from .. import backend
from ..nn import Module
from .hooks import Hook, TrainerView


class Lookahead(Hook):
    """Every ``period`` optimizer steps, at global step k of K, the slow weights move toward the training
    weights, slow += (1 - d) (fast - slow) with d = base^period (k / K)^3, and the training weights become the
    slow ones; every floating-point parameter and buffer takes part (batch-norm statistics too). After the
    run's last step the network is the slow weights (``final_step``). The slow weights are this hook's state:
    saved in the checkpoint, so a run stopped at any step resumes exactly."""

    name = "lookahead"
    every_rank = True          # every replica pulls its (equal) weights back alike

    def __init__(self, model: Module, period: int = 5, base: float = 0.95):
        if int(period) != period or period < 1:
            raise ValueError(f"Lookahead period must be a positive number of steps, got {period}")
        if not 0 < base <= 1:
            raise ValueError(f"Lookahead base must be in (0, 1], got {base}")
        self.model, self.period, self.base = model, int(period), float(base)
        self.slow: OrderedDict | None = None        # name -> the slow copy; None until the run starts

    def _weights(self) -> OrderedDict:
        """The model's floating-point parameters and buffers, by state-dict name (the live arrays)."""
        out = OrderedDict((name, p.data) for name, p in self.model.named_parameters())
        out.update((name, b) for name, b in self.model.named_buffers() if b.dtype.kind == "f")
        return out

    def fit_start(self, trainer: TrainerView) -> None:
        if self.slow is None:
            self.slow = OrderedDict((k, w.copy()) for k, w in self._weights().items())

    def after_step(self, trainer: TrainerView) -> None:
        k = trainer.epoch * len(trainer.train_loader) + trainer.step
        if k % self.period == 0:
            self._pull(1.0 - self.base ** self.period * (k / trainer.total_steps) ** 3)

    def final_step(self, trainer: TrainerView) -> None:
        self._pull(0.0)

    def _pull(self, rate: float) -> None:
        """slow += rate (fast - slow), then fast = slow (in place: parameters stay views of the optimizer's
        flat buffers)."""
        for (name, w), slow in zip(self._weights().items(), self.slow.values()):
            if rate:
                slow += rate * (w - slow)
            backend.get_array_module(w).copyto(w, slow)

    def state_dict(self) -> dict:
        return {"slow": OrderedDict((k, backend.to_numpy(v).copy()) for k, v in (self.slow or {}).items()) or None}

    def load_state_dict(self, state: dict | None) -> None:
        slow = (state or {}).get("slow")
        if slow is None:
            self.slow = None                         # starts from the weights when the run does
            return
        live = self._weights()
        if list(slow) != list(live):
            raise ValueError(f"Lookahead state does not fit the model: {sorted(set(slow) ^ set(live))[:3]}")
        self.slow = OrderedDict((k, backend.to_device(slow[k], live[k].dtype).copy()) for k in live)
