"""A user's model with every coupling physical pruning must handle: residual additions,
depthwise convolutions and channel concatenation. Used by the tests as a file-path factory."""

import torch
from torch import nn


class BlockNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        # residual: stem output + this branch must keep the same channels
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        # depthwise separable
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.pw = nn.Conv2d(16, 24, 1, bias=False)
        # two branches concatenated
        self.left = nn.Conv2d(24, 12, 3, padding=1)
        self.right = nn.Conv2d(24, 20, 1)
        self.head = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.relu(self.pw(self.dw(x)))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = torch.relu(self.head(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def block_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return BlockNet(num_classes, in_channels)
