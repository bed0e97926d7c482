"""Model families, `build_model`, and loading a ticket's weights into a tweaked model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .mobilenet import MobileNet, mobilenet
from .resnet import ResNet, resnet18, resnet34
from .units import ConvUnit
from .vgg import VGG, vgg16

if TYPE_CHECKING:
    from lth_core.config import ModelConfig

ARCHS = ("resnet18", "resnet34", "vgg16", "mobilenet")

__all__ = ["ARCHS", "ConvUnit", "MobileNet", "ResNet", "VGG", "build_model", "load_ticket_weights"]


def build_model(cfg: ModelConfig, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised model; `image_size` (square inputs) decides where small inputs skip downsampling."""
    if cfg.arch == "resnet18":
        return resnet18(in_channels, num_classes, cfg.width)
    if cfg.arch == "resnet34":
        return resnet34(in_channels, num_classes, cfg.width)
    if cfg.arch == "vgg16":
        return vgg16(in_channels, num_classes, image_size, cfg.width)
    if cfg.arch == "mobilenet":
        return mobilenet(in_channels, num_classes, image_size, cfg.width)
    raise ValueError(f"unknown architecture {cfg.arch!r}; allowed: {', '.join(ARCHS)}")


def load_ticket_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a ticket's state_dict into a model that may carry injected skips.

    The only keys the ticket may lack are the injected skips' (`.skip.` in the
    name): they keep their fresh initialisation. Anything else is a mismatch
    between ticket and model and is refused before any weight is copied.
    """
    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    missing = sorted(k for k in expected - set(state) if ".skip." not in k)
    if unexpected or missing:
        raise ValueError(f"ticket weights do not fit the model: unexpected keys {unexpected[:5]}"
                       f"{' ...' if len(unexpected) > 5 else ''}, missing keys {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''} (only injected-skip keys may be missing)")
    model.load_state_dict(state, strict=False)
