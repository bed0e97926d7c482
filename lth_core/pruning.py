"""Magnitude pruning: global or layer-wise, to an exact number of kept weights.

IMP and OMP both reduce to `prune_to_sparsity`: keep the largest-magnitude
weights among those the current mask still keeps, so that the overall sparsity
is exactly the target (to one weight). IMP calls it once per level with the
previous level's trained weights and mask; OMP calls it from the dense net.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lth_core.masks import Mask


class EmptyLayerError(ValueError):
    """A prune would remove every weight of a layer."""


def prune_to_sparsity(weights: Mapping[str, torch.Tensor], mask: Mask, sparsity: float, *,
                      scope: str = "global", allow_empty_layers: bool = False) -> Mask:
    """A new mask with `sparsity` of the masked weights removed, by smallest |weight| among the
    weights `mask` keeps. `scope="layerwise"` gives every tensor the same sparsity instead."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "global":
        new = _prune_global(weights, mask, sparsity)
    elif scope == "layerwise":
        new = {name: _keep_largest(weights[name].detach().abs().cpu(), mask[name],
                                   _kept_count(mask[name].numel(), sparsity))
               for name in mask}
    else:
        raise ValueError(f"unknown pruning scope {scope!r}; allowed: global, layerwise")
    emptied = [name for name, m in new.items() if not m.any()]
    if emptied and not allow_empty_layers:
        raise EmptyLayerError(
            f"pruning to sparsity {sparsity:.4f} would remove every weight of {', '.join(emptied)}; "
            "lower the sparsity, use scope 'layerwise', or set pruning.allow_empty_layers to allow it")
    return Mask(new)


def _kept_count(total: int, sparsity: float) -> int:
    return int(round(total * (1.0 - sparsity)))


def _prune_global(weights: Mapping[str, torch.Tensor], mask: Mask, sparsity: float) -> dict[str, torch.Tensor]:
    names = list(mask)
    scores = torch.cat([weights[n].detach().abs().float().cpu().flatten() for n in names])
    keep = torch.cat([mask[n].flatten() for n in names])
    flat = _keep_largest(scores, keep, _kept_count(keep.numel(), sparsity))
    out, offset = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = flat[offset:offset + size].view_as(mask[n])
        offset += size
    return out


def _keep_largest(scores: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """Bool tensor keeping the `count` largest scores among the entries `keep` already keeps."""
    available = int(keep.sum())
    if count > available:
        raise ValueError(f"cannot keep {count} weights: only {available} remain unpruned "
                         "(the target sparsity is below the current one)")
    flat_scores = torch.where(keep.flatten(), scores.flatten().float(), torch.tensor(-1.0))
    new = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if count:
        new[torch.topk(flat_scores, count, sorted=False).indices] = True
    return new.view_as(keep)
