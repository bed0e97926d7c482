"""The contract of a mask source: one module per source, listed in `MODULES`.

A source turns scores into a `Mask` at each of a draw's target sparsities. What it scores is
declared by `weights`:

- "previous_level": the weights of the previous level after its re-training (IMP, so a draw
  trains every level in turn);
- "dense": the trained dense net (one-shot magnitude pruning, OMP);
- "init": the ticket's initialisation (pruning at initialisation: random, ERK, SNIP, GraSP,
  SynFlow), so a draw needs no training at all.

`MaskRequest` is everything a source may look at. Sources never touch the store.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lth_core.masks import Mask
from lth_core.pruning import keep_top_scores

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
"""`batches(n)`: n seeded training batches (normalised images, labels) on the model's device,
the same n batches on every call."""


@dataclass
class MaskRequest:
    """One mask to draw: score `model`'s weights (see `MaskSource.weights`) and keep 1 - `sparsity`
    of the prunable weights `previous` still keeps.

    `model` is on the draw's device, in train mode; a source that changes its weights, mode or
    gradients works on a copy (`copy.deepcopy`). `seed` seeds every random choice (the ticket's).
    """

    model: nn.Module
    previous: Mask
    sparsity: float
    seed: int
    scope: str = "global"
    allow_empty_layers: bool = False
    batches: Batches | None = None
    input_shape: tuple[int, int, int] = (3, 32, 32)

    @property
    def names(self) -> list[str]:
        """The prunable parameters, in the mask's (sorted) order."""
        return list(self.previous)

    def scoring_copy(self, train: bool) -> tuple[nn.Module, list[nn.Parameter]]:
        """A copy of the model to score, in train or eval mode (as the source's reference code
        has it) with the pruned weights zeroed, and its prunable weights in `names` order."""
        net = copy.deepcopy(self.model).train(train)
        self.previous.apply_(net)
        params = dict(net.named_parameters())
        return net, [params[n] for n in self.names]

    def parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.names}

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from `seed`: the same random mask for the same ticket."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g

    def keep_top(self, scores: dict[str, torch.Tensor]) -> Mask:
        """The mask keeping the highest scores under the request's scope (global or per layer)."""
        return keep_top_scores(scores, self.previous, self.sparsity, scope=self.scope,
                               allow_empty_layers=self.allow_empty_layers)


def summed_gradients(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: list[nn.Parameter],
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The gradient of `loss(images, labels)` with respect to `weights`, summed over `batches`."""
    totals = [torch.zeros_like(w) for w in weights]
    for images, labels in batches:
        for total, g in zip(totals, torch.autograd.grad(loss(images, labels), weights), strict=True):
            total += g
    return totals


class MaskSource:
    """Subclass, set the class attributes, implement `mask`, and export an instance as `SOURCE`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the docs table and `--help`
    reference: ClassVar[str]  # the paper that defines it
    weights: ClassVar[str]  # "init" | "dense" | "previous_level" (see the module docstring)
    uses_data: ClassVar[bool] = False  # scores need training batches (`MaskRequest.batches`)
    uses_scope: ClassVar[bool] = True  # False: the source sets each layer's sparsity itself (`pruning.scope` refused)

    def mask(self, request: MaskRequest) -> Mask:
        raise NotImplementedError

    def kept_per_layer(self, shapes: Mapping[str, torch.Size], sparsity: float, scope: str) -> dict[str, int] | None:
        """How many weights each layer keeps at `sparsity` (from the dense net), where the shapes
        alone decide it (a layer-wise scope); None where the scores do (a global ranking). A draw
        uses it to refuse, before anything trains, a schedule that must empty a layer."""
        if scope != "layerwise":
            return None
        return {name: round(math.prod(shape) * (1.0 - sparsity)) for name, shape in shapes.items()}

    @property
    def at_init(self) -> bool:
        """Pruning at initialisation: the draw trains nothing."""
        return self.weights == "init"
