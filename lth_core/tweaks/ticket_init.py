"""The lottery-ticket controls: is it the ticket's initialisation that matters, or only its mask?

- `ticket`: the drawn mask with the ticket's own starting weights (the lottery ticket);
- `reinit`: the same mask with a fresh random initialisation under a seed of its own
  (open_lth's reinitialize branch; Frankle & Carbin 2019, Section 2);
- `shuffle`: the ticket's initialisation with the mask's kept positions shuffled within each
  layer, so every layer keeps as many weights (open_lth's randomize-layerwise branch).

The control's seeds derive from the spend seed and never equal the ticket's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lth_core.masks import Mask
from lth_core.models import build_model
from lth_core.schema import ConfigError
from lth_core.tweaks.base import SpendContext, Tweak

if TYPE_CHECKING:
    from lth_core.config import SpendConfig

CONTROLS = ("ticket", "reinit", "shuffle")
CONTROL_SEED_OFFSET = 1_000_003  # control seed = ticket seed + offset * (spend seed + 1) mod 2**64


def control_seed(ctx: SpendContext) -> int:
    """Never the ticket's own seed: the offset is odd and 1 <= spend seed + 1 <= 2**63 (seeds are
    checked to be in [0, 2**63 - 1]), so offset * (spend seed + 1) is never a multiple of 2**64.
    Taken mod 2**64, the range torch seeds take."""
    return (ctx.spend.ticket.seed + CONTROL_SEED_OFFSET * (ctx.spend.seed + 1)) % 2**64


def shuffle_within_layers(mask: Mask, seed: int) -> Mask:
    """The mask with each tensor's kept positions permuted at random (same count per tensor)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    shuffled = {}
    for name, kept in mask.items():
        flat = kept.flatten()
        shuffled[name] = flat[torch.randperm(flat.numel(), generator=generator)].view_as(kept)
    return Mask(shuffled)


class TicketInit(Tweak):
    name = "init"
    summary = "lottery-ticket control: the ticket's init, a fresh init (reinit) or the mask shuffled per layer"
    value_type = str
    default = "ticket"
    choices = CONTROLS
    search = ("ticket",)
    example = "reinit"

    def check_spend(self, value: Any, spend: SpendConfig) -> None:
        if value == "reinit" and spend.tweaks.rewind_epoch:
            raise ConfigError(self.path, "reinit starts from a fresh initialisation, which has no rewind point; "
                                         "use it with rewind_epoch 0", ("tweaks.rewind_epoch",))
        if value == "shuffle" and spend.level == 0:  # the dense net has no mask: the control would be vanilla
            raise ConfigError(self.path, "shuffle permutes a level's mask; level 0 is the dense net, which has "
                                         "none: spend a pruned level", ("level",))

    def label(self, value: Any) -> str:
        return value

    def model(self, value: Any, model: nn.Module, ctx: SpendContext) -> None:
        if value != "reinit":
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(control_seed(ctx))
            fresh = build_model(ctx.spend.ticket.model, in_channels=ctx.dataset.in_channels,
                                num_classes=ctx.dataset.num_classes, image_size=ctx.dataset.image_size)
        model.load_state_dict(fresh.state_dict())

    def mask(self, value: Any, mask: Mask, ctx: SpendContext) -> Mask:
        return shuffle_within_layers(mask, control_seed(ctx)) if value == "shuffle" else mask


TWEAK = TicketInit()
