"""net-dilated: the C1-C4 network of peer pipeline 002, with dilated, 1x1, depthwise-separable and strided
convolutions and an average-pool head (193,280 parameters for 10 classes)."""
from __future__ import annotations

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register

# (in, out, kernel, stride, padding, dilation, groups, followed by BN + ReLU + Dropout); the seed's table.
# Its count of 193,280 fixes where batch norm is not: not between the depthwise conv and its pointwise
# conv (one separable convolution), nor after C3's 1x1 transition straight before the average pool.
LAYERS = [
    ("c1", [(3, 32, 3, 1, 0, 1, 1, True), (32, 64, 3, 1, 0, 1, 1, True), (64, 64, 3, 1, 0, 2, 1, True)]),
    ("c2", [(64, 32, 1, 1, 0, 1, 1, True), (32, 32, 3, 1, 1, 1, 32, False), (32, 64, 1, 1, 0, 1, 1, True),
            (64, 64, 3, 1, 0, 1, 1, True)]),
    ("c3", [(64, 64, 3, 2, 0, 1, 1, True), (64, 32, 1, 1, 0, 1, 1, False)]),
    ("c4", [(32, 64, 3, 1, 1, 1, 1, True), (64, 64, 3, 1, 1, 1, 1, True)]),
]


class NetDilated(ChainModel):
    """C1 (32x32 -> 24x24, the last conv dilated 2), C2 (1x1, depthwise 3x3 + pointwise, 3x3), C3 (strided
    3x3, 1x1, AvgPool 2), C4 (two 3x3), AvgPool 5 -> 1x1 conv to the classes -> Flatten. Convolutions without
    biases; BN + ReLU + Dropout(p) after the convolutions marked so."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.05, seed: int | None = 0,
                 dtype: type = np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        order: list[nn.Module] = []
        for block, layers in LAYERS:
            mods: list[nn.Module] = []
            for cin, cout, k, s, p, d, g, regular in layers:
                mods.append(nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False,
                                      rng=rng, dtype=dtype))
                if regular:
                    mods += [nn.BatchNorm2d(cout, dtype=dtype), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            if block == "c3":
                mods.append(nn.AvgPool2d(2))
            if block == "c4":
                mods.append(nn.AvgPool2d(5))
            setattr(self, block, nn.Sequential(*mods))
            order.append(getattr(self, block))
        self.output = nn.Conv2d(64, num_classes, 1, bias=False, rng=rng, dtype=dtype)
        self.flatten = nn.Flatten()
        self._order = order + [self.output, self.flatten]


# 002's recipe: SGD 0.01 momentum 0.9 wd 1e-4, OneCycle to 0.05, 30 epochs, batch 128; flip,
# ShiftScaleRotate(0.0625, 0.1, 7 degrees, p 0.5), a 16x16 cutout at p 0.5. No random crop.
register("net-dilated", NetDilated, Recipe(
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=128, epochs=30, lr_schedule="onecycle",
    max_lr=0.05, dropout_rate=0.05, crop_padding=0, shift_scale_rotate=(0.0625, 0.1, 7.0), ssr_p=0.5,
    cutout=16, cutout_p=0.5),
    "the dilated / depthwise-separable network of peer pipeline 002")
