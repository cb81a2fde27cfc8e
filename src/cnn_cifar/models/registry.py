"""The model registry: each entry is a builder and the training recipe tuned for it.

A new model family is one ``register`` call beside its class: ``train_cli --model NAME`` then builds it
and takes its recipe for every setting the user leaves out; ``test_cli`` rebuilds it from a checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..nn import Module, dropout_rate


@dataclass(frozen=True)
class Recipe:
    """The training settings a model is tuned for (train_cli's defaults for it; flags override each): the
    optimizer, the schedules, regularisation and augmentation. What is about the run instead (data, seed,
    folders) is in training.config.RunConfig."""
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int | float = 200            # a fraction ends the last epoch early (its steps rounded up)
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    dropout_schedule: str = "none"
    dropout_rate: float = 0.0        # also the rate the model is built with when none is given
    min_dropout: float = 0.0
    max_dropout: float = 0.5
    beta1: float = 0.9
    beta2: float = 0.999
    lr_decay_factor: float = 0.1
    lr_decay_steps: float | tuple[float, ...] | None = None   # one interval, or milestone epochs
    max_lr: float | None = None          # onecycle peak (None: lr)
    pct_start: float = 0.3               # onecycle: fraction of the run spent warming up
    lr_points: tuple[float, ...] | None = None   # piecewise: fraction, factor, ... (None: its default triangle)
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    clip_grad_norm: float = 0.0          # max global L2 norm of the gradients; 0 = no clipping
    ema: float = 0.0                     # decay of the weights' moving average; 0 = none
    ema_bn_batches: int = 40             # training batches the average's BN statistics are measured on; 0 = averaged
    label_smoothing: float = 0.0
    loss_reduction: str = "mean"         # the batch's loss: its mean or its sum (as PyTorch's reduction)
    bn_lr_scale: float = 1.0             # batch-norm parameters in a group of their own: lr x this, weight_decay / this
    lookahead_period: int | None = None  # steps between lookahead's pulls (training.Lookahead); None = off
    freeze_after: tuple[str, ...] | None = None   # "param=epochs": the parameter trains for that many epochs only
    tta: str = "none"                    # test-time augmentation of the run's final evaluation (training.tta)
    amp: bool = False                    # mixed precision (float16 compute, loss scaling) on CuPy
    crop_padding: int = 4
    no_flip: bool = False
    cutout: int = 0
    cutout_fill: str = "mean"            # mean (0 after normalisation) or zero (black pixels)
    cutout_p: float = 1.0
    shift_scale_rotate: tuple[float, float, float] | None = None   # shift, scale, degrees
    ssr_p: float = 0.5
    ssr_border: str = "reflect"
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    mixup: float = 0.0                   # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0                  # Beta(alpha, alpha) of cutmix; 0 = off
    translate: int = 0                   # reflect-padded random translation (instead of crop_padding); 0 = off
    alternating_flip: bool = False       # each image flipped on alternate epochs (half from the first)

    def to_dict(self) -> dict:
        return asdict(self)


Builder = Callable[..., Module]
"""builder(num_classes=..., dropout=..., seed=..., dtype=...) -> Module"""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Builder
    recipe: Recipe
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, build: Builder, recipe: Recipe, description: str = "") -> ModelEntry:
    """Add a model under ``name`` (a name may be registered once)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    entry = _REGISTRY[name] = ModelEntry(name, build, recipe, description)
    return entry


def unregister(name: str) -> None:
    """Remove a model (for tests and plug-ins that register temporary models)."""
    _REGISTRY.pop(name, None)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_models() -> list[str]:
    """Names accepted by build_model, in registration order."""
    return list(_REGISTRY)


def recipe(name: str) -> Recipe:
    """The training recipe of a registered model."""
    return get_entry(name).recipe


def skip_input_gradient(model: Module) -> None:
    """Let layers skip the gradient w.r.t. their input where nothing before them trains (in PyTorch, a tensor
    without ``requires_grad``): each module with ``needs_input_grad`` (a ``Conv2d``) gets it True only if a
    parameter of a module registered before it has ``requires_grad``. The first layer never needs it (the
    images' gradient), nor a layer behind frozen ones (airbench94's whitening layer once its bias stops
    training: ``FreezeParameters`` calls this again). Models register their modules in forward order, as every
    model here does. Called by ``build_model``; set ``needs_input_grad = True`` again on the first layer
    (``model.conv1.needs_input_grad = True``) for a gradient w.r.t. the images."""
    upstream = False
    for m in model.modules():
        if hasattr(m, "needs_input_grad"):
            m.needs_input_grad = upstream
        upstream = upstream or any(p.requires_grad for p in m._parameters.values())


def build_model(name: str, num_classes: int = 10, dropout: float | None = None, seed: int | None = 0,
                dtype: type = np.float32, **options: object) -> Module:
    """Build a registered model; the same seed gives the same initial weights. Without ``dropout`` the
    model gets its recipe's rate. ``options`` are the builder's own keywords (``shortcut="pad"`` for the
    ResNets). ``model.config`` records what rebuilds it (name, classes, dropout and the options). The first
    layer skips the images' gradient (``skip_input_gradient``)."""
    entry = get_entry(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    try:
        model = entry.build(num_classes=num_classes,
                            dropout=entry.recipe.dropout_rate if dropout is None else dropout,
                            seed=seed, dtype=dtype, **options)
    except TypeError as exc:
        raise ValueError(f"model {name!r} does not take the options {sorted(options)} ({exc})") from None
    skip_input_gradient(model)
    model.config = {"name": name, "num_classes": num_classes, "dropout": float(dropout_rate(model) or 0.0),
                    **options}
    return model


def options_of(config: dict) -> dict:
    """The builder options recorded in a model config (what build_model's ``options`` were)."""
    return {k: v for k, v in config.items() if k not in ("name", "num_classes", "dropout")}
