"""senet: depthwise-separable convolutions, each followed by Squeeze-and-Excitation, at CIFAR's own 32x32
(peer pipeline 003 upscaled to 128x128; this network does not). 330,794 parameters for 10 classes."""
from __future__ import annotations

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register

# (in, out, stride) of each block: three stages at 32x32, 16x16 and 8x8.
BLOCKS = [(32, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 256, 1)]
SE_REDUCTION = 4


def se_block(cin: int, cout: int, stride: int, rng: np.random.Generator, dtype: type) -> nn.Module:
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU -> SE; with the input added back when
    the shape is kept (no projection otherwise, as MobileNetV2)."""
    body = nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False, rng=rng, dtype=dtype),
        nn.BatchNorm2d(cin, dtype=dtype), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False, rng=rng, dtype=dtype), nn.BatchNorm2d(cout, dtype=dtype),
        nn.ReLU(inplace=True), nn.SqueezeExcitation(cout, cout // SE_REDUCTION, rng=rng, dtype=dtype))
    return nn.ResidualSum(body) if cin == cout and stride == 1 else body


class SENet(ChainModel):
    """Stem conv 3->32 + BN + ReLU, seven SE blocks (64, 64, 128/2, 128, 256/2, 256, 256), global average
    pool, Dropout, Linear(256->classes)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, seed: int | None = 0,
                 dtype: type = np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False, rng=rng, dtype=dtype),
                                  nn.BatchNorm2d(32, dtype=dtype), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(se_block(i, o, s, rng, dtype) for i, o, s in BLOCKS))
        self.pool = nn.GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(256, num_classes, rng=rng, dtype=dtype)
        self._order = [self.stem, self.blocks, self.pool, self.dropout, self.fc]


# Our recipe (003 publishes none for 32x32 inputs): one-cycle SGD-Nesterov to 0.2, wd 5e-4, label smoothing
# 0.1, batch 128, crop + flip, 30 epochs.
register("senet", SENet, Recipe(
    optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128, epochs=30,
    lr_schedule="onecycle", pct_start=0.25, label_smoothing=0.1),
    "depthwise-separable convolutions with Squeeze-and-Excitation (after peer pipeline 003)")
