"""The basic residual block of He et al. (2016) for CIFAR ResNets."""
from __future__ import annotations

import numpy as np

from ..backend import Array
from .activation import ReLU
from .conv import Conv2d
from .module import Module, Sequential
from .norm import BatchNorm2d


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 convolution + BN where stride or width change
    (option B of the paper). Convolutions before BN carry no bias.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 rng: np.random.Generator | None = None, dtype: type = np.float32):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False, rng=rng, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu1 = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        if stride != 1 or in_planes != planes:
            self.shortcut = Sequential(Conv2d(in_planes, planes, 1, stride, 0, bias=False, rng=rng, dtype=dtype),
                                       BatchNorm2d(planes, dtype=dtype))
        else:
            self.shortcut = None
        self.relu2 = ReLU(inplace=True)

    def forward(self, x: Array) -> Array:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out += self.shortcut(x) if self.shortcut is not None else x
        return self.relu2(out)

    def backward(self, dy: Array) -> Array:
        d = self.relu2.backward(dy)
        dx = self.conv1.backward(self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(d)))))
        dx += self.shortcut.backward(d) if self.shortcut is not None else d
        return dx
