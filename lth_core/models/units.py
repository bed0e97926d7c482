"""The one conv unit every model family is built from.

Keeping conv, BN, the optional injected skip and the activation in one module
is what lets the tweaks act on any family without per-model code: activation
swapping looks for `nn.ReLU` modules, skip injection sets `ConvUnit.skip`.
"""

from __future__ import annotations

import torch
from torch import nn


def scaled(base: int, width: float) -> int:
    """Channels of a layer with `base` channels at width multiplier `width` (at least 1)."""
    return max(1, round(base * width))


def init_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """He init for a conv followed by ReLU (fan_out, as torchvision's ResNets)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ConvUnit(nn.Module):
    """conv -> BN -> activation, with an optional injected skip.

    `skip` stays None until a tweak sets it; it sees the unit's input and is added
    before the activation: to the conv's output before BN when the skip has no
    normalisation of its own (`joins_before_norm`), else after BN. `injectable=False` marks units a skip must not be added
    to (a ResNet's stem and downsample shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: bool = True, injectable: bool = True):
        super().__init__()
        self.conv = init_conv_(nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                         padding=kernel_size // 2, groups=groups, bias=False))
        self.bn = nn.BatchNorm2d(out_channels)
        self.register_module("skip", None)  # declared here so an injected skip sits before `act`
        self.act = nn.ReLU() if activation else nn.Identity()
        self.injectable = injectable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        skip = self.skip
        if skip is not None and skip.joins_before_norm:
            y = y + skip(x)
        y = self.bn(y)
        if skip is not None and not skip.joins_before_norm:
            y = y + skip(x)
        return self.act(y)
