"""The built-in networks. Each adapts to the input channels, image size and class count.

LeNet-300-100 and LeNet-5 are the two networks of the Deep Compression tables; VGG, ResNet-20
and MobileNetV2 exercise every coupling that physical pruning must handle (batch norm, residual
additions, depthwise groups).
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.models._registry import register_model


def _flat_features(features: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, *image_size)).numel()


class LeNet300(nn.Module):
    """LeNet-300-100: fully connected 300-100-classes (266,610 parameters at 28x28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size[0] * image_size[1], 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


@register_model
def lenet300(
    num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)
) -> nn.Module:
    """LeNet-300-100, fully connected."""
    return LeNet300(num_classes, in_channels, image_size)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as in Deep Compression: conv 20, conv 50, fc 500, fc 10 (431K at 28x28).

    Images smaller than 16 pixels get padding 2 so that both 5x5 convolutions fit.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        pad = 0 if min(image_size) >= 16 else 2
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=pad)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        self.pool = nn.MaxPool2d(2)
        flat = _flat_features(
            nn.Sequential(self.conv1, self.pool, self.conv2, self.pool), in_channels, image_size
        )
        self.fc1 = nn.Linear(flat, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.pool(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Caffe LeNet-5 (conv 20, conv 50, fc 500, fc classes)."""
    return LeNet5(num_classes, in_channels, image_size)


class VGG(nn.Module):
    """A small VGG with batch norm; pools only while the feature map is at least 2 pixels."""

    CONFIG = (32, 32, "M", 64, 64, "M", 128, 128, "M")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, min(image_size)
        for item in self.CONFIG:
            if not isinstance(item, int):  # "M": a max-pool
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model
def vgg(num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Small VGG with batch norm (6 conv layers, 32-64-128)."""
    return VGG(num_classes, in_channels, image_size)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection when the shape changes (He et al.'s option B)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: three stages of three basic blocks, 16-32-64 channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes, size = 16, min(image_size)
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 and size >= 4 else 1
                size //= stride
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model
def resnet20(
    num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """CIFAR-style ResNet-20 with residual additions."""
    return ResNet20(num_classes, in_channels, image_size)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """A small MobileNetV2: (expand, channels, repeats, stride) per stage, as in the paper."""

    CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
        ]
        channels, size = 16, min(image_size)
        for expand, out, repeats, stride in self.CONFIG:
            for i in range(repeats):
                s = stride if i == 0 and size >= 4 else 1
                size //= s
                layers.append(InvertedResidual(channels, out, s, expand))
                channels = out
        layers += [nn.Conv2d(channels, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """Small MobileNetV2 with depthwise-separable inverted residuals."""
    return MobileNetV2(num_classes, in_channels, image_size)
