"""Small PyTorch models for the offline datasets."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 100, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D (length-40 signals), in the spirit of the
    mnist1d paper's ConvBase; ``batch_norm=True`` adds BatchNorm layers."""

    def __init__(self, length: int, num_classes: int, channels: int = 25, batch_norm: bool = False):
        super().__init__()
        norm = (lambda c: nn.BatchNorm1d(c)) if batch_norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), norm(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), norm(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), norm(channels), nn.ReLU(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


MODELS = {"mlp": MLP, "cnn1d": CNN1D}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model.name='{name}' is not known; valid choices: {', '.join(sorted(MODELS))}")
    if name == "mlp":
        n = 1
        for d in input_shape:
            n *= d
        return MLP(n, num_classes, **options)
    if len(input_shape) != 1:
        raise ValueError(f"model.name=cnn1d needs 1-D inputs, got shape {input_shape}; use model=mlp")
    return CNN1D(input_shape[0], num_classes, **options)
