"""SimpleCNN: the small baseline network of design.md (232,314 parameters for 10 classes)."""
from __future__ import annotations

import numpy as np

from .. import nn
from .base import ChainModel
from .registry import Recipe, register


class SimpleCNN(ChainModel):
    """Conv(3->8, 3x3) -> BN -> ReLU -> MaxPool 2 -> Flatten -> Linear(1800->128) -> BN1d -> ReLU
    -> Dropout -> Linear(128->classes)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.6, seed: int | None = 0,
                 dtype: type = np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, rng=rng, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(8, dtype=dtype)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 15 * 15, 128, rng=rng, dtype=dtype)
        self.bn2 = nn.BatchNorm1d(128, dtype=dtype)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes, rng=rng, dtype=dtype)
        self._order = [self.conv1, self.bn1, self.relu1, self.pool, self.flatten,
                       self.fc1, self.bn2, self.relu2, self.dropout, self.fc2]


register("cnn", SimpleCNN, Recipe(
    optimizer="sgd", lr=0.02, momentum=0.9, nesterov=False, weight_decay=5e-4, batch_size=64, epochs=200,
    lr_schedule="cosine", warmup_epochs=10.0, min_lr=0.0,
    dropout_schedule="linear_decay", dropout_rate=0.6, min_dropout=0.2, max_dropout=0.7),
    "SimpleCNN, the small baseline of design.md")
