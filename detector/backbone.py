"""Backbones returning C3, C4, C5 (strides 8, 16, 32) for the feature pyramid.

`SmallBackbone` is a from-scratch ResNet-like network sized to train in minutes
on a CPU; `ResNetBackbone` wraps torchvision's ResNet-18/34/50 without
downloading anything (an optional path loads local weights).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm2.weight)  # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.norm2(self.conv2(self.conv1(x))))


class SmallBackbone(nn.Module):
    """Stem at stride 2, then four stages of (strided conv + one residual block).

    Widths are width x (1, 1, 2, 4, 8); width 32 gives about 1.2M parameters.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        widths = [width, width, 2 * width, 4 * width, 8 * width]
        self.stem = conv_bn_relu(3, widths[0], stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn_relu(widths[i], widths[i + 1], stride=2), BasicBlock(widths[i + 1])) for i in range(4)
        )
        self.out_channels = tuple(widths[2:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[1:]  # strides 8, 16, 32


class ResNetBackbone(nn.Module):
    def __init__(self, depth: int = 18, weights_path: str = ""):
        super().__init__()
        builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
        net = builders[depth](weights=None)
        if weights_path:
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        expansion = 4 if depth == 50 else 1
        self.out_channels = (128 * expansion, 256 * expansion, 512 * expansion)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.layer2(self.stem(x))
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


def build_backbone(name: str, width: int = 32, weights_path: str = "") -> nn.Module:
    if name == "small":
        return SmallBackbone(width)
    if name.startswith("resnet") and name[len("resnet") :].isdigit():
        return ResNetBackbone(int(name[len("resnet") :]), weights_path)
    raise ValueError(f"backbone must be 'small' or 'resnet18/34/50', got {name!r}")
