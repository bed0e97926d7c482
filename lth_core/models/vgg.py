"""VGG-16 with BatchNorm, CIFAR-style: no dense head, average pool then one linear layer.

A max-pool that would shrink the map below 1x1 (8x8 digits reach 1x1 after
three) is left out for that input size. It is replaced by `nn.Identity` rather
than dropped so that parameter names (`features.<i>.conv.weight`) do not depend
on the input size.
"""

from __future__ import annotations

import torch
from torch import nn

from .units import ConvUnit, scaled

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], in_channels: int, num_classes: int, image_size: int,
                 width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2) if size >= 2 else nn.Identity())
                size = max(1, size // 2)
            else:
                c_out = scaled(v, width)
                layers.append(ConvUnit(c_in, c_out, 3))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(in_channels: int, num_classes: int, image_size: int, width: float = 1.0) -> VGG:
    return VGG(VGG16, in_channels, num_classes, image_size, width)
