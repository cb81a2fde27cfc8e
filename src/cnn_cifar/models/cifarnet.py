"""cifarnet: the depthwise-separable network with residual projections of peer pipeline 004 (174,762
parameters for 10 classes)."""
from __future__ import annotations

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register


def separable(cin: int, cout: int, rng: np.random.Generator, dtype: type, stride: int = 1,
              dilation: int = 1) -> list[nn.Module]:
    """Depthwise 3x3 (padding = dilation, so the size is kept at stride 1) then pointwise 1x1 to ``cout``
    channels, without biases, then batch norm."""
    return [nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin, bias=False,
                      rng=rng, dtype=dtype),
            nn.Conv2d(cin, cout, 1, bias=False, rng=rng, dtype=dtype), nn.BatchNorm2d(cout, dtype=dtype)]


class CIFARNet(ChainModel):
    """C1 conv 3->40; C2 separable 40->128 and C3 separable 128->240 (dilation 4), each plus a 1x1-conv + BN
    projection of its input; C4 separable 240->384 at stride 2. ReLU and spatial dropout (Dropout2d) after
    each block; global average pool -> Linear(384->classes). The count of 174,762 holds with bias-free
    convolutions and batch norm after the pointwise convolutions only."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.05, seed: int | None = 0,
                 dtype: type = np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)

        def after() -> list[nn.Module]:
            return [nn.ReLU(inplace=True), nn.Dropout2d(dropout)]

        def projected(cin: int, cout: int, dilation: int) -> nn.Module:
            return nn.ResidualSum(nn.Sequential(*separable(cin, cout, rng, dtype, dilation=dilation)),
                                  nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False, rng=rng, dtype=dtype),
                                                nn.BatchNorm2d(cout, dtype=dtype)))
        self.c1 = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1, bias=False, rng=rng, dtype=dtype),
                                nn.BatchNorm2d(40, dtype=dtype), *after())
        self.c2 = nn.Sequential(projected(40, 128, 1), *after())
        self.c3 = nn.Sequential(projected(128, 240, 4), *after())
        self.c4 = nn.Sequential(*separable(240, 384, rng, dtype, stride=2), *after())
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(384, num_classes, rng=rng, dtype=dtype)
        self._order = [self.c1, self.c2, self.c3, self.c4, self.pool, self.fc]


# 004's recipe: SGD-Nesterov 0.1, wd 5e-4, cosine to 1e-6 without warm-up, batch 512, gradient clipping at
# 1.0, AMP (on CuPy; NumPy trains it in float32); flip, ShiftScaleRotate(0.0625, 0.1, 15 degrees), one 16x16
# cutout filled with the mean, ColorJitter(0.2, 0.2, 0.2, 0.02), a 32x32 crop of the 4-padded image. 250 epochs.
register("cifarnet", CIFARNet, Recipe(
    optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=512, epochs=250,
    lr_schedule="cosine", warmup_epochs=0.0, min_lr=1e-6, clip_grad_norm=1.0, amp=True, dropout_rate=0.05,
    shift_scale_rotate=(0.0625, 0.1, 15.0), cutout=16, cutout_fill="mean", color_jitter=(0.2, 0.2, 0.2, 0.02)),
    "the depthwise-separable network with residual projections of peer pipeline 004")
