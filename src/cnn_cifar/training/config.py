"""The settings of a training run, resolved once: what the user gave, else the checkpoint's, else the
model's recipe, else the defaults below. Also builds what the settings describe (optimizer, schedules,
augmentation), so the CLI only parses and wires."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..data import AugmentConfig, BatchLoader
from ..errors import SettingError
from ..models import Recipe, recipe
from ..nn import Module, Parameter, SoftmaxCrossEntropy
from ..nn.norm import _BatchNorm
from ..optim import (
    ADAMW_DEFAULT_WEIGHT_DECAY,
    DropoutSchedule,
    LRSchedule,
    Optimizer,
    ReduceLROnPlateau,
    build_optimizer,
    total_steps,
)
from .ema import ModelEMA
from .hooks import EarlyStopping, FreezeParameters, Hook, SaveSnapshots
from .lookahead import Lookahead
from .tta import TTA_CHOICES


@dataclass(frozen=True)
class RunConfig(Recipe):
    """Every setting of a run: the recipe's fields (defaulting to the model's recipe, see ``resolve``), then
    the run's own."""
    model: str = "cnn"
    dataset: str = "cifar10"
    data: str = "data"
    seed: int = 0
    backend: str = "auto"
    shortcut: str | None = None          # ResNets: "projection" (their default) or "pad" (option A)
    no_augment: bool = False
    early_stop: int = 0                  # patience in epochs without a better test accuracy; 0 = off
    save_every: int = 0                  # keep <model>_epoch<N>.pkl every N epochs; 0 = off
    limit_train: int | None = None
    limit_test: int | None = None
    checkpoint_dir: str = "checkpoint"
    log_dir: str = "log"
    tensorboard: str | None = None       # folder for TensorBoard event files
    tensorboard_every: int = 50          # also log the batch loss every N steps; 0 = per epoch only

    def __post_init__(self) -> None:
        if self.min_dropout > self.max_dropout:
            raise SettingError(f"min_dropout {self.min_dropout} is above max_dropout {self.max_dropout}",
                               "min_dropout", "max_dropout")
        if self.min_lr > self.lr:
            raise SettingError(f"min_lr {self.min_lr} is above lr {self.lr}", "min_lr", "lr")
        self.make_lr_schedule()                   # its own checks (milestones, onecycle, plateau)
        self.augmentation()                       # and the augmentation's
        if self.loss_reduction not in ("mean", "sum"):
            raise SettingError(f"loss_reduction must be mean or sum, got {self.loss_reduction!r}", "loss_reduction")
        if not (math.isfinite(self.bn_lr_scale) and self.bn_lr_scale > 0):
            raise SettingError(f"bn_lr_scale must be > 0, got {self.bn_lr_scale:g}", "bn_lr_scale")
        if self.lookahead_period is not None and (int(self.lookahead_period) != self.lookahead_period
                                                  or self.lookahead_period < 1):
            raise SettingError(f"lookahead_period must be a positive number of steps, got {self.lookahead_period}",
                               "lookahead_period")
        self.frozen_after()
        if self.tta not in ("none", *TTA_CHOICES):
            raise SettingError(f"unknown tta {self.tta!r}; choose one of none, {', '.join(TTA_CHOICES)}", "tta")

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant, one sentence each."""
        notes = []
        if self.lr_schedule != "onecycle" and 0 < self.epochs <= self.warmup_epochs:
            reached = self.make_lr_schedule()(self.epochs)
            notes.append(f"the warm-up ({self.warmup_epochs:g} epochs) is not shorter than the run ({self.epochs:g} "
                         f"epochs): the learning rate reaches {reached:g} of its {self.lr:g}"
                         + ("" if self.lr_schedule in ("none", "plateau") else " and never decays"))
        return notes

    def run_settings(self) -> dict:
        """What a checkpoint records and ``--resume`` restores (with the log's folder; not the backend, the
        checkpoints' folder or TensorBoard's)."""
        return {k: v for k, v in asdict(self).items() if k in RESTORED}

    # -- what the settings build --------------------------------------------------------------
    def param_groups(self, model: Module) -> list[Parameter] | list[dict]:
        """The optimizer's parameters: all of them in one group, or with ``bn_lr_scale`` the batch norms' in a
        first group whose lr is scaled by it and weight_decay divided by it (the same decay per step), the
        rest in a second."""
        params = list(model.parameters())
        if self.bn_lr_scale == 1:
            return params
        norm = [p for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()]
        if not norm:
            raise SettingError(f"bn_lr_scale: {self.model} has no batch norm", "bn_lr_scale")
        ids = {id(p) for p in norm}
        return [{"params": norm, "lr": self.lr * self.bn_lr_scale,
                 "weight_decay": self.weight_decay / self.bn_lr_scale},
                {"params": [p for p in params if id(p) not in ids]}]

    def build_optimizer(self, model_or_params: Module | Iterable[Parameter]) -> Optimizer:
        """The optimizer over a model's parameter groups (``param_groups``) or the given parameters."""
        params = (self.param_groups(model_or_params) if isinstance(model_or_params, Module)
                  else model_or_params)
        return build_optimizer(self.optimizer, params, lr=self.lr, momentum=self.momentum,
                               nesterov=self.nesterov, weight_decay=self.weight_decay,
                               betas=(self.beta1, self.beta2))

    def make_criterion(self) -> SoftmaxCrossEntropy:
        return SoftmaxCrossEntropy(self.label_smoothing, reduction=self.loss_reduction)

    def frozen_after(self) -> dict[str, float]:
        """``freeze_after`` as parameter name -> the epochs it trains for."""
        out: dict[str, float] = {}
        for item in self.freeze_after or ():
            name, sep, epochs = str(item).partition("=")
            try:
                value = float(epochs)
            except ValueError:
                value = -1.0
            if not sep or not name or not (math.isfinite(value) and value >= 0):
                raise SettingError(f"freeze_after takes NAME=EPOCHS (a parameter's state-dict name and the epochs it "
                                   f"trains for, >= 0), got {item!r}", "freeze_after")
            out[name] = value
        return out

    def make_lookahead(self, model: Module) -> Lookahead | None:
        return Lookahead(model, self.lookahead_period) if self.lookahead_period else None

    def make_lr_schedule(self, steps_per_epoch: int = 1) -> LRSchedule | ReduceLROnPlateau:
        """The lr schedule; onecycle needs the loader's ``steps_per_epoch`` (it counts optimizer steps). A
        fractional epoch count is the run's steps rounded up (the schedule ends on the run's last step)."""
        epochs = total_steps(self.epochs, steps_per_epoch) / steps_per_epoch
        base = LRSchedule(self.lr_schedule, self.lr, epochs, self.warmup_epochs, self.min_lr,
                          self.lr_decay_factor, self.lr_decay_steps, max_lr=self.max_lr, pct_start=self.pct_start,
                          steps_per_epoch=steps_per_epoch, points=self.lr_points)
        if self.lr_schedule == "plateau":
            return ReduceLROnPlateau(base, self.plateau_factor, self.plateau_patience)
        return base

    def make_ema(self, model: Module, bn_batches: Callable[[], Iterable] | None = None) -> ModelEMA | None:
        """The weights' moving average (``--ema``), measuring its batch-norm statistics on ``bn_batches()``
        (see ``make_bn_batches``) before each evaluation."""
        return ModelEMA(model, self.ema, bn_batches if self.ema_bn_batches else None) if self.ema else None

    def make_bn_batches(self, x: np.ndarray, y: np.ndarray, batch_size: int, mean, std) -> Callable[[], BatchLoader]:
        """A fresh loader of the first ``ema_bn_batches`` batches of (x, y), augmented as in training but not
        mixed, with its own stream seeded by ``seed``: the same images at every call, so a resumed run measures
        what a straight one does, and the training stream is left alone."""
        n = min(self.ema_bn_batches * batch_size, len(x))
        aug = replace(self.augmentation(), mixup=0.0, cutmix=0.0)
        return lambda: BatchLoader(x[:n], y[:n], batch_size, mean, std, augment_cfg=aug,
                                   rng=np.random.default_rng(self.seed), drop_last=True, prefetch=False)

    def run_hooks(self) -> list[Hook]:
        """Snapshots, early stopping and TensorBoard, as far as they are on (TensorBoard raises ImportError
        with a one-line message when tensorboardX is missing)."""
        hooks: list[Hook] = [SaveSnapshots(self.save_every)] if self.save_every else []
        if self.freeze_after:
            hooks.append(FreezeParameters(self.frozen_after()))
        if self.early_stop:
            hooks.append(EarlyStopping(self.early_stop))
        if self.tensorboard:
            from .tensorboard import TensorBoardLogger
            hooks.append(TensorBoardLogger(self.tensorboard, self.tensorboard_every))
        return hooks

    def make_dropout_schedule(self) -> DropoutSchedule:
        return DropoutSchedule(self.dropout_schedule, self.dropout_rate, self.min_dropout, self.max_dropout,
                               self.epochs)

    def augmentation(self) -> AugmentConfig:
        if self.no_augment:
            return AugmentConfig.none()
        return AugmentConfig(self.crop_padding, not self.no_flip, self.cutout, self.cutout_fill, self.cutout_p,
                             self.shift_scale_rotate, self.ssr_p, self.ssr_border, self.color_jitter, self.mixup,
                             self.cutmix, translate=self.translate, alternating_flip=self.alternating_flip)


FIELDS = tuple(f.name for f in fields(RunConfig))
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))
# About this machine, not the run; a resumed run writes its checkpoints beside the one it continues (resolve).
NOT_RESTORED = ("backend", "checkpoint_dir", "tensorboard")
RESTORED = tuple(k for k in FIELDS if k not in NOT_RESTORED)


def _tuple_or_scalar(v):
    """A flag's list of numbers as RunConfig keeps it: one value as the scalar, several as a tuple."""
    if isinstance(v, (list, tuple)):
        return v[0] if len(v) == 1 else tuple(v)
    return v


# Schedules with a warm-up of their own, and where it is set.
OWN_WARMUP = {"onecycle": "over pct_start of the run", "piecewise": "in its lr_points"}
SEQUENCES: tuple[str, ...] = ("lr_decay_steps",)      # one number or several (a checkpoint stores lists)
TUPLES: tuple[str, ...] = ("shift_scale_rotate", "color_jitter", "lr_points", "freeze_after")      # groups of numbers


def resolve(given: dict, saved: dict | None = None, resumed_from: str | os.PathLike | None = None) -> RunConfig:
    """Effective settings: ``given`` (the user's flags; None means not given), else ``saved`` (a checkpoint's
    run settings, on resume), else the model's recipe, else RunConfig's defaults. A run resumed from the
    checkpoint file ``resumed_from`` keeps writing checkpoints in that file's folder unless told otherwise.
    Raises ValueError for an unknown model or inconsistent settings."""
    given = {k: v for k, v in given.items() if v is not None and k in FIELDS}
    saved = {k: v for k, v in (saved or {}).items() if k in RESTORED}
    if resumed_from is not None and "checkpoint_dir" not in given:
        given["checkpoint_dir"] = str(Path(resumed_from).parent)
    model = given.get("model") or saved.get("model") or RunConfig.model
    values = recipe(model).to_dict()
    values.update(saved)
    values.update(given)
    values["model"] = model
    for k in SEQUENCES:
        if k in values:
            values[k] = _tuple_or_scalar(values[k])
    for k in TUPLES:
        if values.get(k) is not None:
            values[k] = tuple(values[k])
    if values["lr_schedule"] in OWN_WARMUP and values["warmup_epochs"]:
        if given.get("warmup_epochs"):
            kind = values["lr_schedule"]
            raise SettingError(f"lr_schedule {kind} warms up by itself {OWN_WARMUP[kind]}; drop warmup_epochs",
                               "lr_schedule", "pct_start", "lr_points", "warmup_epochs")
        values["warmup_epochs"] = 0.0          # the recipe's warmup belongs to its own schedule
    if values["optimizer"] == "adamw" and "weight_decay" not in given and "weight_decay" not in saved:
        # The recipes' 5e-4 is an L2 coefficient for SGD; decoupled decay takes AdamW's own default.
        values["weight_decay"] = ADAMW_DEFAULT_WEIGHT_DECAY
    if values["momentum"] == 0 and values["nesterov"]:
        if given.get("nesterov"):
            raise SettingError("nesterov needs a momentum above 0 (as torch.optim.SGD)", "nesterov")
        values["nesterov"] = False            # the recipe's Nesterov has no meaning without momentum
    return RunConfig(**values)


__all__ = ["FIELDS", "RECIPE_FIELDS", "RESTORED", "RunConfig", "resolve"]
