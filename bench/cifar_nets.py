"""CIFAR-10 networks of the families users bring, written for autoprune's benchmarks after the
architectures of a widely used public collection (kuangliu/pytorch-cifar): ShuffleNet with two
groups and ShuffleNetV2, whose channel shuffles couple channels in ways a dependency graph can
miss, and MobileNetV2 at full width (2.3 M parameters, against the zoo's slim 97 k one), the
network whose compress spent 162 s timing. Use them as ``--model bench/cifar_nets.py:shufflenet_g2``
(32x32x3 input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelShuffle(nn.Module):
    """[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleBottleneck(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; added to the input,
    or (stride 2) concatenated with its average pool."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        first = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(first)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.shuffle(out))))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1)) if self.stride == 2 else F.relu(out + res)


class ShuffleNet(nn.Module):
    def __init__(
        self, out_planes: tuple[int, ...], blocks: tuple[int, ...], groups: int, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        layers, in_planes = [], 24
        for planes, n in zip(out_planes, blocks):
            for i in range(n):
                cat = in_planes if i == 0 else 0  # a stride-2 unit concatenates its input
                layers.append(ShuffleBottleneck(in_planes, planes - cat, 2 if i == 0 else 1, groups))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(out_planes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def shufflenet_g2(
    num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    return ShuffleNet((200, 400, 800), (4, 8, 4), groups=2, num_classes=num_classes)


class SplitUnit(nn.Module):
    """ShuffleNetV2 basic unit: half the channels pass, the other half go through 1x1, depthwise
    3x3, 1x1; both halves concatenated and shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.half = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.half], x[:, self.half :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownUnit(nn.Module):
    """ShuffleNetV2 stride-2 unit: two branches, each halving the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        layers, channels = [], 24
        for width, n in zip(widths[:-1], blocks):
            layers.append(DownUnit(channels, width))
            layers += [SplitUnit(width) for _ in range(n)]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(channels, widths[-1], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def shufflenetv2(
    num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """Width 0.5 (48, 96, 192 channels, 1024 before the classifier), 3/7/3 units."""
    return ShuffleNetV2((48, 96, 192, 1024), (3, 7, 3), num_classes=num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 projection; a residual when the
    stride is 1 (through a 1x1 conv where the width changes, as in the public collection)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Identity()
        if stride == 1 and in_planes != out_planes:
            projection = nn.Conv2d(in_planes, out_planes, 1, bias=False)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """MobileNetV2 for 32x32 input (stride 1 where ImageNet's has 2 in the stem and stage 2)."""
    cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]  # (expansion, out_planes, blocks, stride)
    stem = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
    layers: list[nn.Module] = [stem, nn.BatchNorm2d(32), nn.ReLU()]
    in_planes = 32
    for expansion, out_planes, blocks, stride in cfg:
        for i in range(blocks):
            layers.append(InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1))
            in_planes = out_planes
    layers += [
        nn.Conv2d(320, 1280, 1, bias=False),
        nn.BatchNorm2d(1280),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1280, num_classes),
    ]
    return nn.Sequential(*layers)
