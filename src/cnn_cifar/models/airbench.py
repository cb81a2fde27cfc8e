"""airbench94: the network and recipe of Keller Jordan's fast CIFAR-10 training (arXiv 2404.00498), written
from the paper's description: a frozen whitening layer, three wide conv groups, lookahead, label smoothing and
a triangular per-step learning rate, 9.9 epochs at batch 1024 (1,972,792 parameters for 10 classes)."""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import Array, to_device
from .base import ChainModel
from .registry import Recipe, register

WIDTHS = (64, 256, 256)
WHITENING_IMAGES = 5000            # the first training images the whitening layer is computed from
WHITENING_EPS = 5e-4


def conv_group(cin: int, cout: int, rng: np.random.Generator, dtype: type) -> nn.Sequential:
    """conv3x3 (same size) -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU; the convolutions without bias,
    PyTorch's default initialisation then the identity on their first filters (``nn.init.dirac``); batch
    norms with their weight fixed at 1 (only the bias trains), eps 1e-12 and momentum 0.4."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(((cin, cout), (cout, cout))):
        conv = nn.Conv2d(a, b, 3, padding=1, bias=False, rng=rng, dtype=dtype)
        conv.weight.data = nn.init.dirac(conv.weight.data)
        bn = nn.BatchNorm2d(b, eps=1e-12, momentum=0.4, dtype=dtype)
        bn.weight.requires_grad = False
        layers += [conv] + ([nn.MaxPool2d(2)] if i == 0 else []) + [bn, nn.GELU()]
    return nn.Sequential(*layers)


class Airbench94(ChainModel):
    """whiten (2x2 conv 3->24, no padding, frozen weight) -> GELU -> conv groups of 64, 256, 256 channels ->
    max-pool 3 -> Linear(256 -> classes, no bias) -> x 1/9.

    The whitening weight is data-dependent: ``init_from_data`` sets it from the first ``WHITENING_IMAGES``
    normalised training images (``nn.init.whitening``), which ``train_cli`` does before a new run."""

    init_images = WHITENING_IMAGES

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, seed: int | None = 0, dtype: type = np.float32):
        super().__init__()
        if dropout:
            raise ValueError("airbench94 has no dropout")
        rng = np.random.default_rng(seed)
        self.whiten = nn.Conv2d(3, 2 * 3 * 2 * 2, 2, padding=0, bias=True, rng=rng, dtype=dtype)
        self.whiten.weight.requires_grad = False
        self.act = nn.GELU()
        self.group1 = conv_group(24, WIDTHS[0], rng, dtype)
        self.group2 = conv_group(WIDTHS[0], WIDTHS[1], rng, dtype)
        self.group3 = conv_group(WIDTHS[1], WIDTHS[2], rng, dtype)
        self.pool = nn.MaxPool2d(3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(WIDTHS[2], num_classes, bias=False, rng=rng, dtype=dtype)
        self.scale = nn.Mul(1 / 9)
        self._order = [self.whiten, self.act, self.group1, self.group2, self.group3, self.pool, self.flatten,
                       self.fc, self.scale]

    def init_from_data(self, images: Array) -> None:
        """Set the whitening layer from normalised training images (N, 3, H, W) (the recipe: the first 5,000)."""
        w = nn.init.whitening(np.asarray(images), (2, 2), WHITENING_EPS)
        self.whiten.weight.data[...] = to_device(w, self.whiten.weight.data.dtype)


# The paper's hyper-parameters are stated per 1024 examples for a loss summed over the batch: lr 11.5 and weight
# decay 0.0153, with Nesterov momentum 0.85 whose steady-state gain 1/(1 - 0.85) is divided out. With
# s = 1024 (1 + 1/(1 - 0.85)): lr = 11.5 / s, the per-step decay wd = 0.0153 * batch / s, and PyTorch's coupled
# weight_decay (lr * weight_decay = wd) is wd / lr. The batch-norm biases train at 64 x lr with weight_decay
# divided by 64 (bn_lr_scale), so their per-step decay is the others'.
_BATCH, _MOMENTUM = 1024, 0.85
_S = 1024 * (1 + 1 / (1 - _MOMENTUM))
_LR = 11.5 / _S
_WD = 0.0153 * _BATCH / _S

AIRBENCH94_RECIPE = Recipe(
    optimizer="sgd", lr=_LR, momentum=_MOMENTUM, nesterov=True, weight_decay=_WD / _LR, batch_size=_BATCH,
    epochs=9.9, lr_schedule="piecewise", warmup_epochs=0.0, min_lr=0.0, label_smoothing=0.2, loss_reduction="sum",
    bn_lr_scale=64.0, lookahead_period=5, freeze_after=("whiten.bias=3",), tta="flip-translate",
    crop_padding=0, translate=2, alternating_flip=True)

register("airbench94", Airbench94, AIRBENCH94_RECIPE,
         "Keller Jordan's airbench94: whitening, wide conv groups, 9.9 epochs at batch 1024")
