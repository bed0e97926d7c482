"""Pruning by scores: global or layer-wise, to an exact number of kept weights.

Every mask source reduces to `keep_top_scores`: keep the highest-scoring weights among
those the current mask still keeps, so that the overall sparsity is exactly the target (to
one weight). Magnitude pruning (`prune_to_sparsity`, IMP and OMP) scores by |weight|.
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
    return keep_top_scores({n: weights[n].detach().abs() for n in mask}, mask, sparsity, scope=scope,
                           allow_empty_layers=allow_empty_layers)


def keep_top_scores(scores: Mapping[str, torch.Tensor], mask: Mask, sparsity: float, *,
                    scope: str = "global", allow_empty_layers: bool = False) -> Mask:
    """A new mask keeping the highest `scores` (any sign) among the weights `mask` keeps, with
    `sparsity` of all of `mask`'s weights removed; `scope="layerwise"` prunes each tensor to it."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "global":
        new = _prune_global(scores, mask, sparsity)
    elif scope == "layerwise":
        new = {name: _keep_largest(scores[name].detach().float().cpu(), mask[name],
                                   _kept_count(mask[name].numel(), sparsity))
               for name in mask}
    else:
        raise ValueError(f"unknown pruning scope {scope!r}; allowed: global, layerwise")
    mask = Mask(new)
    if not allow_empty_layers:
        refuse_empty_layers(mask, sparsity)
    return mask


def refuse_empty_layers(mask: Mask, sparsity: float) -> None:
    """Raise EmptyLayerError when a mask removes every weight of a layer (the net cannot learn)."""
    emptied = [name for name, m in mask.items() if not m.any()]
    if emptied:
        raise EmptyLayerError(
            f"pruning to sparsity {sparsity:.4f} would remove every weight of {', '.join(emptied)}; "
            "lower the sparsity, use scope 'layerwise', or set pruning.allow_empty_layers to allow it")


def _kept_count(total: int, sparsity: float) -> int:
    return int(round(total * (1.0 - sparsity)))


def _prune_global(scores: Mapping[str, torch.Tensor], mask: Mask, sparsity: float) -> dict[str, torch.Tensor]:
    names = list(mask)
    flat_scores = torch.cat([scores[n].detach().float().cpu().flatten() for n in names])
    keep = torch.cat([mask[n].flatten() for n in names])
    flat = _keep_largest(flat_scores, keep, _kept_count(keep.numel(), sparsity))
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
    flat_scores = torch.where(keep.flatten(), scores.flatten().float(), torch.tensor(-torch.inf))
    new = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if count:
        new[torch.topk(flat_scores, count, sorted=False).indices] = True
    return new.view_as(keep)
