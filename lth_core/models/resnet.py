"""CIFAR-style ResNet-18 / ResNet-34 (He et al. 2016, as in the authors' code).

A 3x3 stride-1 stem and no max-pool keep the resolution of small images; the
four stages (strides 1, 2, 2, 2) take an 8x8 input down to 1x1, 32x32 to 4x4.
Shortcuts that change shape are a 1x1 conv + BN (option B).
"""

from __future__ import annotations

import torch
from torch import nn

from .units import ConvUnit, scaled


class BasicBlock(nn.Module):
    """Two 3x3 units; the shortcut is added before the block's own ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.unit1 = ConvUnit(in_channels, out_channels, 3, stride, activation=True)
        self.unit2 = ConvUnit(out_channels, out_channels, 3, 1, activation=False)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvUnit(in_channels, out_channels, 1, stride, activation=False, injectable=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.unit2(self.unit1(x)) + identity)


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: list[int], in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        channels = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.stem = ConvUnit(in_channels, channels[0], 3, 1, injectable=False)
        c_in = channels[0]
        for i, (c_out, n, stride) in enumerate(zip(channels, blocks_per_stage, (1, 2, 2, 2)), start=1):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels: int, num_classes: int, width: float = 1.0) -> ResNet:
    return ResNet([2, 2, 2, 2], in_channels, num_classes, width)


def resnet34(in_channels: int, num_classes: int, width: float = 1.0) -> ResNet:
    return ResNet([3, 4, 6, 3], in_channels, num_classes, width)
