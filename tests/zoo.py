"""Small networks of the families users bring, for the zoo test: each factory takes
``num_classes`` and ``in_channels`` like a user's ``file.py:factory``. No batch norm in
the way of what the test checks; every family's coupling is what matters."""

from __future__ import annotations

import torch
from torch import nn


class _Shuffle(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, groups: int = 2) -> None:
        super().__init__()
        self.g = groups
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.gconv1 = nn.Conv2d(16, 16, 1, groups=groups)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.gconv2 = nn.Conv2d(16, 32, 1, groups=groups)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gconv1(torch.relu(self.stem(x))))
        b, c, h, w = x.shape
        x = x.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(torch.relu(self.gconv2(self.dw(x))).mean((2, 3)))


class _SqueezeExcite(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.squeeze = nn.Linear(16, 4)
        self.excite = nn.Linear(4, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        s = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3))))))
        x = x * s.view(x.shape[0], -1, 1, 1)
        return self.fc(x.mean((2, 3)))


class _Branches(nn.Module):
    """Inception-like: three branches concatenated."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 12, 3, padding=1)
        self.b1 = nn.Conv2d(12, 8, 1)
        self.b3 = nn.Conv2d(12, 8, 3, padding=1)
        self.b5 = nn.Conv2d(12, 8, 5, padding=2)
        self.head = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b3(x)), torch.relu(self.b5(x))], 1)
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


class _Separable(nn.Module):
    """MobileNet's depthwise-separable blocks."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.dw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw1 = nn.Conv2d(16, 32, 1)
        self.dw2 = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw2 = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw1(torch.relu(self.dw1(x))))
        x = torch.relu(self.pw2(torch.relu(self.dw2(x))))
        return self.fc(x.mean((2, 3)))


class _Transposed(nn.Module):
    """An encoder-decoder: a strided conv down, a transposed conv up."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(torch.relu(self.down(x))))
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _TwoConsumers(nn.Module):
    """A conv whose output feeds two consumers: a branch and a residual addition."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.branch = nn.Conv2d(16, 16, 3, padding=1)
        self.side = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(16 + 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.branch(x)) + x
        z = torch.relu(self.side(x))
        return self.fc(torch.cat([y.mean((2, 3)), z.mean((2, 3))], 1))


class _SplitShuffle(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, the other half go through a branch, both
    are concatenated and shuffled."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x1, x2 = x[:, :8], x[:, 8:]
        x = torch.cat([x1, torch.relu(self.conv2(torch.relu(self.conv1(x2))))], 1)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def split_shuffle(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _SplitShuffle(num_classes, in_channels)


def shuffle(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Shuffle(num_classes, in_channels)


def squeeze_excite(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _SqueezeExcite(num_classes, in_channels)


def branches(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Branches(num_classes, in_channels)


def separable(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Separable(num_classes, in_channels)


def transposed(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Transposed(num_classes, in_channels)


def two_consumers(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _TwoConsumers(num_classes, in_channels)


ZOO = ["shuffle", "split_shuffle", "squeeze_excite", "branches", "separable", "transposed", "two_consumers"]
