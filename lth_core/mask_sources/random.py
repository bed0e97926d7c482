"""Random pruning at initialisation: every layer keeps the same fraction of its weights, at
positions drawn uniformly from the ticket's seed. The naive baseline the pruning-at-init
methods must beat (Liu et al. 2022)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from lth_core.mask_sources.base import MaskRequest, MaskSource
from lth_core.masks import Mask


class Random(MaskSource):
    name = "random"
    summary = "uniform layer-wise sparsity, weights chosen uniformly at random (seeded by the ticket)"
    reference = ("Liu et al. 2022, The Unreasonable Effectiveness of Random Pruning: Return of the Most "
                 "Naive Baseline for Sparse Training (arXiv:2202.02643)")
    weights = "init"
    uses_scope = False

    def mask(self, request: MaskRequest) -> Mask:
        """Random scores ranked per layer, so every layer keeps round(numel * (1 - sparsity)) weights.
        The request's scope is ignored: the uniform layer-wise distribution is what defines this source
        (a global top-k of random scores would only add sampling noise to it)."""
        generator = request.generator()
        scores = {n: torch.rand(request.previous[n].shape, generator=generator) for n in request.names}
        return dataclasses.replace(request, scope="layerwise").keep_top(scores)

    def kept_per_layer(self, shapes: Mapping[str, torch.Size], sparsity: float, scope: str) -> dict[str, int]:
        return super().kept_per_layer(shapes, sparsity, "layerwise")


SOURCE = Random()
