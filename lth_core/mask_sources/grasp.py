"""GraSP (Wang et al. 2020): keep the weights whose removal least reduces gradient flow.

The score is S = -θ ⊙ Hg, g the loss gradient and H the Hessian (Hg by double backward). Removing
a weight with a large S reduces the gradient norm least (or increases it), so GraSP REMOVES the
highest scores and keeps the lowest. Conventions follow the reference implementation
(alecwangcq/GraSP, `pruner/GraSP.py`): logits divided by a temperature T = 200, g summed over
batches and detached, Hg = ∇(g · ∇L) summed over the same batches, the net in train mode,
scores `-layer.weight.data * layer.weight.grad`, and the mask keeping S <= the threshold of
the top `ratio` scores. Unlike the reference, linear layers are not re-initialised (we score the
ticket's own initialisation) and only the prunable weights enter g and H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_core.mask_sources.base import MaskRequest, MaskSource, summed_gradients
from lth_core.masks import Mask

BATCHES = 2
"""Batches for g and Hg (the reference splits one class-balanced draw into two halves)."""
TEMPERATURE = 200.0
"""Logits are divided by it (the reference's T): it softens the softmax so that the loss at
initialisation is not saturated and its Hessian carries signal."""


class GraSP(MaskSource):
    name = "grasp"
    summary = "gradient signal preservation: removes the weights with the highest -θ ⊙ Hg (Hessian-gradient)"
    reference = ("Wang, Zhang & Grosse 2020, Picking Winning Tickets Before Training by Preserving "
                 "Gradient Flow (arXiv:2002.07376)")
    weights = "init"
    uses_data = True

    def mask(self, request: MaskRequest) -> Mask:
        net, weights = request.scoring_copy(train=True)  # the reference prunes the net as built: train mode
        batches = list(request.batches(BATCHES))
        grad = summed_gradients(lambda x, y: _loss(net, x, y), weights, batches)

        def flow(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # g(x) · grad: its gradient is Hg
            g = torch.autograd.grad(_loss(net, images, labels), weights, create_graph=True)
            return sum((gi * fixed).sum() for gi, fixed in zip(g, grad, strict=True))

        hessian_grad = summed_gradients(flow, weights, batches)
        score = {n: -(w * hg).detach() for n, w, hg in zip(request.names, weights, hessian_grad, strict=True)}  # S
        return request.keep_top({n: -s for n, s in score.items()})  # remove the highest S: keep the lowest


def _loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(images) / TEMPERATURE, labels)


SOURCE = GraSP()
