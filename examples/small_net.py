"""A network of your own, as autoprune takes one: a factory that returns an ``nn.Module`` and
accepts ``num_classes``, ``in_channels`` and ``image_size``. A small residual CNN: two conv
blocks, a residual block (whose two convs' outputs are added, so their filters are pruned
together), global pooling and a classifier.

    autoprune search --model examples/small_net.py:small_resnet --dataset digits --trials 10
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


def small_resnet(
    num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (8, 8)
) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Residual(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
