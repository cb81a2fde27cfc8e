"""Dynamic loss scaling for mixed precision, as ``torch.amp.GradScaler`` with its defaults.

Float16 gradients below about 6e-8 flush to zero. The scaler multiplies the loss gradient by ``scale``
(2**16 to start) before backward, so the float16 gradients are that much larger; ``unscale_`` divides the
optimizer's float32 gradients by it again and checks them for inf/NaN. ``step`` then updates the weights,
or skips the update where the gradients overflowed; ``update`` halves the scale after an overflow and
doubles it after ``growth_interval`` steps in a row without one.

The check and the unscaling work on the optimizer's flat gradient buffers: a few whole-buffer operations
and one host read per step, however many parameters the model has.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .optimizers import Optimizer


class GradScaler:
    """``dl = scaler.scale(dl)``; backward; ``scaler.unscale_(opt)`` [clip]; ``scaler.step(opt)``;
    ``scaler.update()``. With ``enabled=False`` every call passes through (one code path for both)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not init_scale > 0 or not growth_factor > 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("GradScaler: needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 "
                             "and growth_interval >= 1")
        self.enabled = bool(enabled)
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0          # good steps in a row since the scale last changed
        self.skipped = 0                 # updates skipped for overflow, over the run
        self._found_inf: bool | None = None   # this step's verdict (None until unscale_)

    def get_scale(self) -> float:
        return self.scale_value if self.enabled else 1.0

    def scale(self, grad: Array) -> Array:
        """The loss gradient times the scale (in place; float32, before it meets float16 layers)."""
        if self.enabled:
            grad *= self.scale_value
        return grad

    def unscale_(self, optimizer: Optimizer) -> bool:
        """Divide the gradients by the scale and check them; returns whether they hold inf or NaN. Call once
        per step, before clipping (the clipping threshold then applies to the true gradients)."""
        if not self.enabled:
            return False
        if self._found_inf is not None:
            raise RuntimeError("GradScaler.unscale_ was already called since the last update()")
        inv = 1.0 / self.scale_value
        bad = None
        for g in optimizer.buffers:
            g.adopt_replaced()
            xp = get_array_module(g.grad)
            g.grad *= inv
            flag = ~xp.isfinite(g.grad).all()
            bad = flag if bad is None else bad | flag
        self._found_inf = bool(bad)                  # the step's one host read
        return self._found_inf

    def step(self, optimizer: Optimizer) -> bool:
        """``optimizer.step()`` unless the gradients overflowed (unscaling them first if not done yet);
        returns whether the update was taken."""
        if not self.enabled:
            optimizer.step()
            return True
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after an overflow, grow after ``growth_interval`` good steps; ends the step."""
        if not self.enabled:
            return
        if self._found_inf is None:
            raise RuntimeError("GradScaler.update needs unscale_ or step first in this step")
        if self._found_inf:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped += 1
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.growth_tracker = 0
        self._found_inf = None

    def state_dict(self) -> dict:
        """Plain data for a checkpoint (PyTorch's keys, plus the count of skipped updates)."""
        return {"scale": self.scale_value, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self.growth_tracker, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = float(state["scale"])
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
        self.growth_tracker = int(state.get("_growth_tracker", 0))
        self.skipped = int(state.get("skipped", 0))
        self._found_inf = None
