"""Squeeze-and-Excitation (Hu et al., 2018): channels rescaled by a gate computed from their means."""
from __future__ import annotations

import numpy as np

from ..backend import Array, get_array_module
from . import init
from .activation import ReLU, Sigmoid
from .layout import check_4d, chwn, nchw
from .linear import Linear
from .module import Module
from .pooling import GlobalAvgPool2d


class SqueezeExcitation(Module):
    """Squeeze-and-Excitation (Hu et al., 2018), as torchvision.ops.SqueezeExcitation: the channels of x
    scaled by sigmoid(fc2(relu(fc1(mean over H, W of x)))), with fc1: C -> squeeze_channels, fc2 back to C."""

    def __init__(self, channels: int, squeeze_channels: int, rng: np.random.Generator | None = None,
                 dtype: type = init.DEFAULT_DTYPE):
        super().__init__()
        self.channels = channels
        self.pool = GlobalAvgPool2d()
        self.fc1 = Linear(channels, squeeze_channels, rng=rng, dtype=dtype)
        self.relu = ReLU()
        self.fc2 = Linear(squeeze_channels, channels, rng=rng, dtype=dtype)
        self.gate = Sigmoid()

    def forward(self, x: Array) -> Array:
        check_4d(self, x, self.channels)
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))     # (N, C)
        xc = chwn(x)
        scale = s.T[:, None, None, :]                                    # (C, 1, 1, N)
        self.save_for_backward(xc, scale)
        return nchw(xc * scale)

    def backward(self, dy: Array) -> Array:
        xc, scale = self.saved()
        xp = get_array_module(dy)
        dyc = chwn(dy)
        dx = dyc * scale
        ds = xp.einsum("chwn,chwn->nc", dyc, xc)                        # gradient of the gate's output
        dpool = self.pool.backward(self.fc1.backward(self.relu.backward(self.fc2.backward(self.gate.backward(ds)))))
        dx += chwn(dpool)
        return nchw(dx)
