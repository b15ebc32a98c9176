"""A small model of the user's own: one hidden layer with a tanh."""
from __future__ import annotations

import math

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)
