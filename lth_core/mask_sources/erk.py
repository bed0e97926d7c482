"""Erdős–Rényi-Kernel sparsity (Evci et al. 2020, RigL): small layers are pruned less. Each layer's
density is proportional to (n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w), scaled so the
net keeps 1 - sparsity of its weights; positions are random within each layer."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lth_core.mask_sources.base import MaskRequest, MaskSource
from lth_core.masks import Mask
from lth_core.pruning import refuse_empty_layers


def erk_densities(shapes: Mapping[str, torch.Size], sparsity: float,
                  max_density: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer densities eps * sum(shape) / prod(shape) keeping 1 - `sparsity` of all the weights:
    (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w) for a conv, (n_in + n_out) / (n_in n_out) for a
    linear layer.

    A layer whose density would exceed its cap (1, or `max_density`: what the current mask still keeps)
    is fixed at the cap and eps recomputed over the others, until none exceeds, as RigL's
    `get_sparsities_erdos_renyi` does. Fixing a layer only raises eps, so fixing every offender of a
    pass at once ends where RigL's one-layer-per-pass loop does.
    """
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    cap = {n: 1.0 if max_density is None else max_density[n] for n in shapes}
    target = (1.0 - sparsity) * sum(numel.values())
    if target > sum(cap[n] * numel[n] for n in shapes) + 0.5:  # half a weight: counts are rounded
        raise ValueError(f"cannot keep {1 - sparsity:.4f} of the weights: the current mask keeps fewer")
    fixed: set[str] = set()
    while free := [n for n in shapes if n not in fixed]:
        eps = (target - sum(cap[n] * numel[n] for n in fixed)) / sum(raw[n] * numel[n] for n in free)
        over = {n for n in free if eps * raw[n] > cap[n]}
        if not over:
            break
        fixed |= over
    return {n: cap[n] if n in fixed else eps * raw[n] for n in shapes}


class ERK(MaskSource):
    name = "erk"
    summary = "Erdős–Rényi-Kernel layer-wise densities (small layers denser), random weights within each layer"
    reference = "Evci et al. 2020, Rigging the Lottery: Making All Tickets Winners (arXiv:1911.11134)"
    weights = "init"
    uses_scope = False

    def mask(self, request: MaskRequest) -> Mask:
        """Each layer keeps round(density * numel) weights drawn among those `previous` keeps (its
        density capped at that share). The request's scope is ignored: ERK is a layer-wise distribution."""
        previous = request.previous
        densities = erk_densities({n: previous[n].shape for n in previous}, request.sparsity,
                                  {n: previous[n].sum().item() / previous[n].numel() for n in previous})
        generator = request.generator()
        mask = Mask({n: _keep_random(previous[n], round(d * previous[n].numel()), generator)
                     for n, d in densities.items()})
        if not request.allow_empty_layers:
            refuse_empty_layers(mask, request.sparsity)
        return mask

    def kept_per_layer(self, shapes: Mapping[str, torch.Size], sparsity: float, scope: str) -> dict[str, int]:
        return {n: round(d * math.prod(shapes[n])) for n, d in erk_densities(shapes, sparsity).items()}


def _keep_random(keep: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` of the entries `keep` keeps, drawn uniformly (random scores, the top `count` kept)."""
    scores = torch.rand(keep.shape, generator=generator).masked_fill_(~keep, -1.0)
    new = torch.zeros(keep.numel(), dtype=torch.bool)
    new[torch.topk(scores.flatten(), count, sorted=False).indices] = True
    return new.view_as(keep)


SOURCE = ERK()
