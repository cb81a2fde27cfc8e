"""Exponential moving average of a model's weights (parameters and batch-norm buffers), as a hook.

Semantics of torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
use_buffers=True) updated after every optimizer step: the first update copies the weights, each later one
moves the average toward them, ema += (1 - decay) * (w - ema). Integer buffers (BN's num_batches_tracked)
are copied, not averaged.

As a hook it owns its part of the loop: it averages after every optimizer step (``after_step``), provides
the weights the trainer evaluates and saves (``evaluated_weights``: the model's arrays and the average's trade
places, by reference, so nothing is copied and swapping back is exact), and keeps its step count in the
checkpoint (``state_dict``, under ``hooks["ema"]``); the average is the checkpoint's weights, the training
weights travel beside it (``Checkpoint.training_weights``) for ``--resume``.

Averaged batch-norm statistics do not describe the averaged weights: while the learning rate is high the
weights wander, their average has a smaller scale than any of them, and its activations a smaller variance
than the averaged running variance says (the Accuracy page of the manual has the measurements). So, given
``bn_batches`` (a function returning (x, y) batches of training images), ``update_bn`` measures them again
before each evaluation, as torch.optim.swa_utils.update_bn does for SWA.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

from .. import backend
from ..errors import SettingError
from ..nn import Dropout, Module, no_grad
from ..nn.norm import _BatchNorm
from .hooks import Hook, TrainerView


class ModelEMA(Hook):
    """``update()`` after each optimizer step (the ``after_step`` hook); ``swapped()`` to evaluate."""

    every_rank = True          # every replica averages its (equal) weights
    name = "ema"               # its state's key in the checkpoint

    def __init__(self, model: Module, decay: float, bn_batches: Callable[[], Iterable] | None = None):
        if not 0.0 < decay < 1.0:
            raise SettingError(f"ModelEMA decay must be in (0, 1), got {decay}", decay="ema")
        self.model, self.decay = model, float(decay)
        self.bn_batches = bn_batches   # () -> (x, y) batches to measure the average's BN statistics on; None: averaged
        self.is_swapped = False
        # (module, key, is_parameter), in state_dict order; arrays are looked up each time because
        # load_state_dict and batch norm replace them.
        self.slots = [s for name, mod in model.named_modules() for s in
                      [(name, mod, k, True) for k in mod._parameters] + [(name, mod, k, False) for k in mod._buffers]]
        self.names = [f"{name}.{key}" if name else key for name, _, key, _ in self.slots]
        self.reset()

    def _get(self, i: int):
        _, mod, key, is_param = self.slots[i]
        return mod._parameters[key].data if is_param else mod._buffers[key]

    def _set(self, i: int, value) -> None:
        _, mod, key, is_param = self.slots[i]
        if is_param:
            mod._parameters[key].data = value
        else:
            mod._buffers[key] = value

    def reset(self) -> None:
        """Start over from the model's current weights (the next update copies them)."""
        self.shadow = [self._get(i).copy() for i in range(len(self.slots))]
        self.updates = 0

    def update(self) -> None:
        for i, avg in enumerate(self.shadow):
            w = self._get(i)
            if self.updates == 0 or w.dtype.kind != "f":
                self.shadow[i] = w.copy()           # (BN's step counter may be a NumPy scalar)
            else:
                avg += (1.0 - self.decay) * (w - avg)
        self.updates += 1

    def after_step(self, trainer: TrainerView) -> None:
        self.update()

    @contextlib.contextmanager
    def evaluated_weights(self, trainer: TrainerView, evaluating: bool) -> Iterator[bool]:
        """The average, in the model; before an evaluation with its batch-norm statistics measured (given
        ``bn_batches``). The average keeps them: they are what is evaluated and saved."""
        with self.swapped():
            if evaluating:
                self.update_bn()
            yield True

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights (and the average the training ones)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i in range(len(self.slots)):
            live = self._get(i)
            self._set(i, self.shadow[i])
            self.shadow[i] = live
        self.is_swapped = not self.is_swapped

    def update_bn(self) -> None:
        """Measure the average's batch-norm statistics on ``bn_batches()`` (none given: keep the averaged
        ones); call inside ``swapped()``. The average keeps them: they are what is evaluated and saved."""
        if not self.is_swapped:
            raise RuntimeError("ModelEMA.update_bn() runs on the average: call it inside swapped()")
        if self.bn_batches is not None:
            update_bn(self.bn_batches(), self.model)

    def weights(self) -> "OrderedDict":
        """The averaged weights as a state dict (dotted names -> host NumPy copies)."""
        return OrderedDict((n, backend.to_numpy(a).copy()) for n, a in zip(self.names, self.shadow))

    def state_dict(self) -> dict:
        """The decay and the steps averaged; the average itself is the checkpoint's weights."""
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict | None) -> None:
        """Take the average from the model, which holds the checkpoint's weights (``Trainer.restore``): with
        ``state`` those are the average, ``state["updates"]`` steps of it; without (a run saved without EMA)
        they are the weights averaging starts from, as at the start of a run."""
        self.reset()
        if state is not None:
            self.updates = int(state["updates"])


def update_bn(loader: Iterable, model: Module) -> None:
    """Re-estimate every batch norm's running statistics in ``model`` from the (x, y) batches of ``loader``:
    as torch.optim.swa_utils.update_bn, the statistics are reset and become the plain average over the
    batches (momentum 1/k at the k-th batch, which is torch's ``momentum=None``), measured in training mode
    without gradients. Dropout is off meanwhile (the statistics are those evaluation sees, and no random
    numbers are drawn); the model's mode, momenta and drop rates are put back."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    drops = [(m, m.p) for m in model.modules() if isinstance(m, Dropout)]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
    try:
        model.train()
        for m, _ in drops:
            m.set_p(0.0)
        with no_grad():
            for k, (x, _) in enumerate(loader):
                for m in norms:
                    m.momentum = 1.0 / (k + 1)
                model(x)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        for m, p in drops:
            m.set_p(p)
        model.train(was_training)
