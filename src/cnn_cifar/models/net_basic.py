"""net-basic: the plain three-conv network of peer pipeline 001 (620,362 parameters for 10 classes)."""
from __future__ import annotations

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register


class NetBasic(ChainModel):
    """[Conv3x3(pad 1) -> ReLU -> MaxPool 2] with 32, 64, 128 channels -> Flatten -> Linear(2048->256) -> ReLU
    -> Dropout -> Linear(256->classes). Convolutions with biases, no batch norm (as the seed's ``Net``)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, seed: int | None = 0,
                 dtype: type = np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        order: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate((32, 64, 128), start=1):
            conv = nn.Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"relu{i}", nn.ReLU(inplace=True))
            setattr(self, f"pool{i}", nn.MaxPool2d(2))
            order += [conv, getattr(self, f"relu{i}"), getattr(self, f"pool{i}")]
            cin = cout
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128 * 4 * 4, 256, rng=rng, dtype=dtype)
        self.relu4 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, num_classes, rng=rng, dtype=dtype)
        self._order = order + [self.flatten, self.fc1, self.relu4, self.dropout, self.fc2]


# 001's recipe: Adam 1e-3, ReduceLROnPlateau(0.1, patience 2) on the test loss, batch 128, 100 epochs, crop + flip.
register("net-basic", NetBasic, Recipe(
    optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=100, lr_schedule="plateau",
    plateau_factor=0.1, plateau_patience=2, dropout_rate=0.5),
    "the three-conv network of peer pipeline 001")
