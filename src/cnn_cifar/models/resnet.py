"""ResNet-(6n+2) for CIFAR (He et al. 2016): 1x1-conv shortcuts where the shape changes (option B, our
default), or the paper's parameter-free option A (``shortcut="pad"``), which published weights use."""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register


class ResNet(ChainModel):
    """conv3x3(16) -> BN -> ReLU -> 3 stages of n BasicBlocks (16/32/64 channels) -> global average
    pool -> Dropout -> Linear(64 -> classes). With ``shortcut="pad"``, ResNet-20/32/44/56 have the
    published 0.27M/0.46M/0.66M/0.85M parameters."""

    def __init__(self, depth: int = 32, num_classes: int = 10, dropout: float = 0.0,
                 seed: int | None = 0, dtype: type = np.float32, shortcut: str = "projection"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        rng = np.random.default_rng(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.bn1 = nn.BatchNormReLU2d(16, dtype=dtype)               # BN + ReLU, fused
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(nn.BasicBlock(in_planes, planes, stride, rng=rng, dtype=dtype, shortcut=shortcut))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64, num_classes, rng=rng, dtype=dtype)
        self._order = [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3,
                       self.pool, self.dropout, self.fc]
        for m in self.modules():           # He et al.'s initialisation for the convolutions (as torchvision)
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                m.weight.data = nn.init.kaiming_normal(m.weight.shape, m.out_channels // m.groups * kh * kw, rng,
                                                       dtype)


# The ResNet paper's SGD recipe, with cosine decay instead of step decay and one warmup epoch.
RESNET_RECIPE = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128,
                       epochs=200, lr_schedule="cosine", warmup_epochs=1.0, min_lr=0.0,
                       dropout_schedule="none", dropout_rate=0.0, min_dropout=0.0, max_dropout=0.5)
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", partial(ResNet, _depth), RESNET_RECIPE, f"ResNet-{_depth} for CIFAR")
