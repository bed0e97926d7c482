"""MobileNet v1 (Howard et al. 2017), CIFAR-style: stride-1 stem, 13 depthwise-separable blocks.

The four stride-2 blocks halve the map only while it is at least 2x2, decided
from the input size at build time, so 8x8 digits work too (8 -> 4 -> 2 -> 1,
then stride 1). Strides never change parameter names or shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from .units import ConvUnit, scaled

# (output channels, stride) of the 13 blocks.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise unit (one group per channel) then 1x1 pointwise unit."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = ConvUnit(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = ConvUnit(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: float = 1.0):
        super().__init__()
        c_in = scaled(32, width)
        self.stem = ConvUnit(in_channels, c_in, 3)
        blocks = []
        size = image_size
        for base, nominal_stride in BLOCKS:
            stride = nominal_stride if size >= 2 else 1
            size = -(-size // stride)  # ceil: a padded 3x3 conv keeps ceil(size / stride)
            c_out = scaled(base, width)
            blocks.append(DepthwiseSeparable(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.blocks(self.stem(x))), 1))


def mobilenet(in_channels: int, num_classes: int, image_size: int, width: float = 1.0) -> MobileNet:
    return MobileNet(in_channels, num_classes, image_size, width)
