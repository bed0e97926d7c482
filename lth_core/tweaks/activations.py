"""Smooth activations: swap every ReLU of a built model for another activation.

The models use one `nn.ReLU` module per use site, so a swap is a module
replacement that touches no parameter: a ticket's state_dict still loads
strictly, and its mask still fits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lth_core.tweaks.base import SpendContext, Tweak


class PSwish(nn.Module):
    """Swish with a fixed beta: x * sigmoid(beta * x) (the authors' 'pswish', beta = 2).
    beta is a constant, not a parameter, so state_dicts are unchanged by the swap."""

    def __init__(self, beta: float = 2.0):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


_FACTORIES = {
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "pswish": PSwish,
}
ACTIVATIONS = tuple(_FACTORIES)
ACTIVATION_TYPES = tuple(f for f in _FACTORIES.values())
"""Every activation module a swap can put into a model (the analyses count these)."""


def make_activation(name: str) -> nn.Module:
    """A new activation module by config name."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return _FACTORIES[name]()


def swap_activations(model: nn.Module, name: str) -> nn.Module:
    """Replace every `nn.ReLU` module in `model` (in place) by a new `name` activation,
    one new module per use site; returns `model`."""
    make_activation(name)  # fail on a bad name before touching the model
    sites = [qualname for qualname, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, nn.ReLU) and qualname]
    for qualname in sites:
        parent, _, child = qualname.rpartition(".")
        setattr(model.get_submodule(parent), child, make_activation(name))
    return model


class Activation(Tweak):
    name = "activation"
    summary = "swap every ReLU for a smooth activation"
    value_type = str
    default = "relu"
    choices = ACTIVATIONS
    search = ("relu", "swish", "mish")
    example = "swish"

    def label(self, value: Any) -> str:
        return value

    def model(self, value: Any, model: nn.Module, ctx: SpendContext) -> None:
        swap_activations(model, value)


TWEAK = Activation()
