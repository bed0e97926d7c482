"""Training hooks: the fixed points at which `fit` calls out, so a tweak that acts per batch,
per step or per epoch (weight averaging, mixup, a Hessian probe) never edits the loop.

`fit` calls every hook, in order, at:

    on_train_start   once, before the first epoch of this call (also after a resume)
    on_epoch_start   before each epoch's first batch
    on_batch         each batch, before the forward pass: may return new (images, labels)
    on_step_end      after each optimizer step and the mask's re-application
    on_epoch_end     after the lr scheduler's step, before evaluation
    on_train_end     after the last epoch: may replace the model's weights (return True)

The mask is re-applied by the loop after every step and after any `on_train_end` that
returns True, so no hook can revive a pruned weight. A hook that keeps state across
epochs returns it from `state_dict` (tensors, numbers, strings, lists and dicts only:
checkpoints load with `torch.load(weights_only=True)`), and `fit` hands it back through
`load_state_dict` when it resumes, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lth_core.data import Dataset
    from lth_core.masks import Mask
    from lth_core.training import Runtime

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(logits, images, labels): images are passed so a distillation teacher can see them."""


def cross_entropy_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The recipe's loss unless a tweak says otherwise; in float32 whatever the autocast."""
    return F.cross_entropy(logits.float(), labels)


@dataclass
class Loop:
    """What a hook may look at and change while `fit` runs. `scheduler` is the one stepped after
    each epoch; a hook may swap it (SWA switches to its own schedule)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataset: Dataset
    runtime: Runtime
    mask: Mask | None
    epochs: int
    batch_size: int
    epoch: int = 0


class TrainHook:
    """Base class: every callback does nothing; override the ones a hook needs. `name` keys the
    hook's state in a checkpoint (unique among the hooks of one run)."""

    name: str = ""

    def on_train_start(self, loop: Loop) -> None:
        pass

    def on_epoch_start(self, loop: Loop) -> None:
        pass

    def on_batch(self, loop: Loop, images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, labels

    def on_step_end(self, loop: Loop) -> None:
        pass

    def on_epoch_end(self, loop: Loop) -> None:
        pass

    def on_train_end(self, loop: Loop) -> bool:
        """Return True when the model's weights were replaced (the loop re-applies the mask and
        evaluates them again)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Observer(TrainHook):
    """A hook that only watches (it never changes the weights); what it saw goes into the spend's
    result under `name`, and a finished spend is re-run only when its record lacks it."""

    def record(self) -> dict[str, Any]:
        return self.state_dict()

    def covers(self, recorded: dict[str, Any] | None) -> bool:
        """Whether a finished spend's record under `name` holds what this observer would record."""
        return recorded is not None
