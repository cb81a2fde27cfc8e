"""Residual connections: the basic block of He et al. (2016) for CIFAR ResNets with either shortcut of the
paper (``BasicBlock``, ``PadShortcut``), and the sum of a branch and its shortcut around any modules
(``ResidualSum``)."""
from __future__ import annotations

import numpy as np

from ..backend import Array, get_array_module
from .conv import Conv2d
from .fold import conv_bn
from .layout import check_4d, chwn, nchw
from .module import Module, Sequential
from .norm import BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d

SHORTCUTS = ("projection", "pad")


class PadShortcut(Module):
    """Option A of the paper, parameter-free: every ``stride``-th pixel starting at (0, 0), and the new
    channels zero-padded equally on both sides (``(out - in) // 2`` in front, as the CIFAR ResNets of
    He et al. and akamaster/pytorch_resnet_cifar10 do with ``planes // 4``)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"PadShortcut cannot narrow {in_planes} channels to {planes}")
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.front = (planes - in_planes) // 2

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"

    def forward(self, x: Array) -> Array:
        check_4d(self, x, self.in_planes)
        xp = get_array_module(x)
        s, f = self.stride, self.front
        sub = chwn(x)[:, ::s, ::s]                                  # (C, Ho, Wo, N)
        out = xp.zeros((self.planes, *sub.shape[1:]), dtype=x.dtype)
        out[f:f + self.in_planes] = sub
        self.save_for_backward(tuple(x.shape))
        return nchw(out)

    def backward(self, dy: Array) -> Array:
        (n, c, h, w), = self.saved()
        xp = get_array_module(dy)
        s, f = self.stride, self.front
        dx = xp.zeros((c, h, w, n), dtype=dy.dtype)
        dx[:, ::s, ::s] = chwn(dy)[f:f + c]
        return nchw(dx)


class ResidualSum(Module):
    """main(x) + shortcut(x), the shortcut the identity when None; backward sends dy down both branches
    and adds their input gradients."""

    def __init__(self, main: Module, shortcut: Module | None = None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: Array) -> Array:
        y = self.main(x)
        return y + (x if self.shortcut is None else self.shortcut(x))

    def backward(self, dy: Array) -> Array:
        dx = self.main.backward(dy)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy)
        return dx + ds


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or where stride or width change either a 1x1 convolution + BN
    (``shortcut="projection"``, option B of the paper) or sub-sampling with zero-padded channels
    (``"pad"``, option A, no parameters). Convolutions before BN carry no bias. Both ReLUs, and the
    residual sum, are fused into the batch norms: ``bn1`` is a ``BatchNormReLU2d``, ``bn2`` a
    ``BatchNormAddReLU2d`` given the shortcut's output, whose backward returns the shortcut's gradient too.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 rng: np.random.Generator | None = None, dtype: type = np.float32, shortcut: str = "projection"):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False, rng=rng, dtype=dtype)
        self.bn1 = BatchNormReLU2d(planes, dtype=dtype)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.bn2 = BatchNormAddReLU2d(planes, dtype=dtype)
        if (stride != 1 or in_planes != planes) and shortcut == "pad":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        elif stride != 1 or in_planes != planes:
            self.shortcut = Sequential(Conv2d(in_planes, planes, 1, stride, 0, bias=False, rng=rng, dtype=dtype),
                                       BatchNorm2d(planes, dtype=dtype))
        else:
            self.shortcut = None

    def forward(self, x: Array) -> Array:
        out = conv_bn(self.conv1, self.bn1, x)                 # in inference each bn folded into its conv
        return conv_bn(self.conv2, self.bn2, out, self.shortcut(x) if self.shortcut is not None else x)

    def backward(self, dy: Array) -> Array:
        d, dres = self.bn2.backward(dy)
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(d)))
        dx += self.shortcut.backward(dres) if self.shortcut is not None else dres
        return dx
