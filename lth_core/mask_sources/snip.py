"""SNIP (Lee et al. 2019): connection sensitivity at initialisation. A weight's score is
|g ⊙ w|, g the loss gradient: to first order, how much the loss changes if the weight is removed."""

from __future__ import annotations

import torch.nn.functional as F

from lth_core.mask_sources.base import MaskRequest, MaskSource, summed_gradients
from lth_core.masks import Mask

BATCHES = 4
"""Training batches whose loss gradients are summed (the reference code scores one batch of 100;
a few batches make the scores less noisy at the same meaning)."""


class SNIP(MaskSource):
    name = "snip"
    summary = "connection sensitivity: magnitude of loss gradient ⊙ weight at initialisation, global top-k"
    reference = ("Lee, Ajanthan & Torr 2019, SNIP: Single-shot Network Pruning based on Connection "
                 "Sensitivity (arXiv:1810.02340)")
    weights = "init"
    uses_data = True

    def mask(self, request: MaskRequest) -> Mask:
        """Scores on a copy in eval mode: the reference code (namhoonlee/snip-public, `prune.py`) feeds
        `is_train: False`, so BatchNorm normalises with its (initial) running statistics."""
        net, weights = request.scoring_copy(train=False)
        grads = summed_gradients(lambda x, y: F.cross_entropy(net(x), y), weights, request.batches(BATCHES))
        return request.keep_top({n: (g * w).detach().abs() for n, g, w in zip(request.names, grads, weights,
                                                                              strict=True)})


SOURCE = SNIP()
