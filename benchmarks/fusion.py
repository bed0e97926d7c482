"""Horizontal fusion of K same-architecture trials into one model (HFTA, Wang et al. 2021), for
measuring whether a fusion group trains faster than separate trials.

Every convolution of the K members becomes one grouped convolution (groups multiplied by K,
the members' weights stacked along the output channels), every BatchNorm one BatchNorm over
K times the channels (per-channel statistics are per-member statistics), and the classifier a
batched matrix product. Element-wise layers, residual sums and pooling act per channel, so
they need no change. Member k reads channel group k of the input and writes logits group k:
the members stay independent, and their masks stack the same way as their weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lth_core.masks import Mask


class GroupedLinear(nn.Module):
    """K independent linear layers on a (batch, K * in) input: (batch, K * out)."""

    def __init__(self, members: list[nn.Linear]):
        super().__init__()
        self.k = len(members)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in members]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in members]))  # (K, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], self.k, -1)
        return (torch.einsum("bki,koi->bko", x, self.weight) + self.bias).flatten(1)


class Fused(nn.Module):
    """The fused model: the batch is repeated to every member's channel group."""

    def __init__(self, body: nn.Module, k: int):
        super().__init__()
        self.body, self.k = body, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.repeat(1, self.k, 1, 1))


def _fuse_conv(members: list[nn.Conv2d]) -> nn.Conv2d:
    first, k = members[0], len(members)
    fused = nn.Conv2d(first.in_channels * k, first.out_channels * k, first.kernel_size, first.stride,
                      first.padding, first.dilation, first.groups * k, first.bias is not None)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in members]))
        if first.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in members]))
    return fused


def _fuse_bn(members: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = members[0]
    fused = nn.BatchNorm2d(first.num_features * len(members), first.eps, first.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(fused, name).copy_(torch.cat([getattr(m, name) for m in members]))
    return fused


def fuse(models: list[nn.Module]) -> Fused:
    """One model computing the K members side by side (same architecture, any weights)."""
    body = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(body.named_modules()):
        members = [mods[name] for mods in modules]
        if isinstance(module, nn.Conv2d):
            replacement: nn.Module = _fuse_conv(members)
        elif isinstance(module, nn.BatchNorm2d):
            replacement = _fuse_bn(members)
        elif isinstance(module, nn.Linear):
            replacement = GroupedLinear(members)
        elif len(list(module.children())) == 0 and any(p.numel() for p in module.parameters(recurse=False)):
            raise TypeError(f"cannot fuse layer {name} ({type(module).__name__})")
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, attr, replacement)
    return Fused(body, len(models))


def fuse_masks(masks: list[Mask]) -> Mask:
    """The members' masks stacked like their weights (output channels, member by member)."""
    return Mask({f"body.{name}": torch.cat([m[name] for m in masks]) for name in masks[0]})


def fused_cross_entropy(k: int):
    """The members' cross-entropies summed: each member's gradient is its own trial's."""
    def loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_member = logits.float().view(len(labels), k, -1).flatten(0, 1)
        return F.cross_entropy(per_member, labels.repeat_interleave(k)) * k
    return loss
