"""Iterative magnitude pruning: each level removes the smallest-magnitude weights of the previous
level's re-trained net (Frankle & Carbin 2019, "The lottery ticket hypothesis")."""

from __future__ import annotations

from lth_core.mask_sources.base import MaskRequest, MaskSource
from lth_core.masks import Mask


class IMP(MaskSource):
    name = "imp"
    summary = "iterative magnitude pruning: each level prunes the previous level's re-trained weights"
    reference = "Frankle & Carbin 2019, The Lottery Ticket Hypothesis (arXiv:1803.03635)"
    weights = "previous_level"

    def mask(self, request: MaskRequest) -> Mask:
        return request.keep_top({n: p.detach().abs() for n, p in request.parameters().items()})


SOURCE = IMP()
