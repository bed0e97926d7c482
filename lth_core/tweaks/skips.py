"""Injected skip connections: an extra path from a conv unit's input to its output.

Every injectable `ConvUnit` (every 3x3 conv of a ResNet block, every conv of
VGG and MobileNet) gets `unit.skip`, added before the activation:

- `identity`: parameter-free, ResNet "option A" where shapes change (strided
  subsampling, zero-padded channels), so the parameter count stays the ticket's.
  It joins the conv's output *before* the unit's BN: an un-normalised identity
  added after BN doubles the activation scale at every unit (2^8 in a ResNet-18)
  and the net no longer trains (digits, level 5: 13-22% vs 93% vanilla; joined
  before BN: 95%).
- `conv1x1`: a RepVGG-style 1x1 conv + BN branch (strided and grouped like the
  unit's conv), as in the authors' code, joined after the unit's BN. Its
  parameters live under `<unit>.skip.*`; they are dense and never in the mask.

The ticket's own parameters are untouched, so its weights and mask still fit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lth_core.masks import memory_format_of
from lth_core.models.units import ConvUnit, init_conv_
from lth_core.tweaks.base import SpendContext, Tweak

SKIPS = ("none", "identity", "conv1x1")


class IdentitySkip(nn.Module):
    """x subsampled by the stride, with channels zero-padded (or cut) to `out_channels`."""

    joins_before_norm = True

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh > 1 or sw > 1:
            x = x[:, :, ::sh, ::sw]
        extra = self.out_channels - self.in_channels
        if extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        elif extra < 0:
            x = x[:, :self.out_channels]
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class Conv1x1Skip(nn.Sequential):
    """1x1 conv + BN in parallel with the unit's conv (RepVGG); normalised on its own."""

    joins_before_norm = False

    def __init__(self, conv: nn.Conv2d):
        super().__init__(
            init_conv_(nn.Conv2d(conv.in_channels, conv.out_channels, 1, conv.stride, groups=conv.groups,
                                 bias=False)),
            nn.BatchNorm2d(conv.out_channels),
        )


def inject_skips(model: nn.Module, variant: str) -> nn.Module:
    """Set `skip` on every injectable ConvUnit of `model` (in place); returns `model`.
    `none` leaves the model as built."""
    if variant not in SKIPS:
        raise ValueError(f"unknown skip variant {variant!r}; allowed: {', '.join(SKIPS)}")
    if variant == "none":
        return model
    units = [m for m in model.modules() if isinstance(m, ConvUnit) and m.injectable]
    for unit in units:
        conv = unit.conv
        if variant == "identity":
            unit.skip = IdentitySkip(conv.in_channels, conv.out_channels, conv.stride)
        else:
            weight = conv.weight
            unit.skip = Conv1x1Skip(conv).to(device=weight.device, dtype=weight.dtype,
                                             memory_format=memory_format_of(weight))
    return model


class Skip(Tweak):
    name = "skip"
    summary = "inject a skip connection into every conv unit"
    value_type = str
    default = "none"
    choices = SKIPS
    search = ("none", "identity")
    example = "identity"

    def label(self, value: Any) -> str:
        return f"skip-{value}"

    def model(self, value: Any, model: nn.Module, ctx: SpendContext) -> None:
        with torch.random.fork_rng(devices=[]):  # the new branches' init depends on the spend seed only
            torch.manual_seed(ctx.spend.seed)
            inject_skips(model, value)


TWEAK = Skip()
