"""SynFlow (Tanaka et al. 2020): data-free pruning by iteratively conserving synaptic flow.

The score of a weight is |θ ⊙ ∂R/∂θ| with R = 1ᵀ(∏|θ|)1, the output sum of the net with every
parameter and buffer replaced by its absolute value on an all-ones input. Pruning to the target
in many rounds on an exponential schedule, re-scoring in between, avoids layer collapse (a
layer pruned away entirely), which one-shot pruning by the same score suffers at high sparsity.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lth_core.mask_sources.base import MaskRequest, MaskSource
from lth_core.masks import Mask
from lth_core.pruning import keep_top_scores

ROUNDS = 100
"""Prune-and-rescore rounds (the paper's default for SynFlow)."""


def linearized(model: nn.Module) -> nn.Module:
    """The net SynFlow scores: a copy in double precision (R is a product over all layers and
    overflows float32 on deep nets), every state_dict entry made non-negative as the reference's
    `linearize` does (BatchNorm running statistics included), in eval mode as by the reference's
    default `prune_train_mode=False` (BatchNorm uses those statistics, not the one input's)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.abs_()
    return net


def synflow_scores(net: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One round's scores |θ ⊙ ∂R/∂θ|, R = sum(net(ones)), for `mask`'s weights of a `linearized`
    net. Zeroes the weights `mask` prunes in `net` first (so they score 0): masks only shrink from
    round to round, so one copy serves every round."""
    mask.apply_(net)
    params = dict(net.named_parameters())
    weights = [params[n] for n in mask]
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=weights[0].device)
    grads = torch.autograd.grad(net(ones).sum(), weights)
    return {n: (w * g).detach().abs() for n, w, g in zip(mask, weights, grads, strict=True)}


class SynFlow(MaskSource):
    name = "synflow"
    summary = f"synaptic flow θ ⊙ ∂R/∂θ on the absolute-valued net, data-free, re-scored over {ROUNDS} rounds"
    reference = ("Tanaka, Kunin, Yamins & Ganguli 2020, Pruning Neural Networks without any Data by "
                 "Iteratively Conserving Synaptic Flow (arXiv:2006.05467)")
    weights = "init"

    def mask(self, request: MaskRequest) -> Mask:
        """Round k of ROUNDS keeps density d0 * (d / d0)^(k / ROUNDS) of all the weights, d0 the density
        `previous` keeps (1 for a dense net, giving the paper's d^(k / ROUNDS)) and d = 1 - sparsity;
        each round prunes only among the previous round's weights, so nothing is revived."""
        start, end = request.previous.kept / request.previous.total, 1.0 - request.sparsity
        net, mask = linearized(request.model), request.previous
        for k in range(1, ROUNDS + 1):
            scores = synflow_scores(net, mask, request.input_shape)
            # keep_top_scores ranks in float32: divide by the largest score first so none overflows
            top = max(float(s.max()) for s in scores.values()) or 1.0
            mask = keep_top_scores({n: s / top for n, s in scores.items()}, mask,
                                   1.0 - start * (end / start) ** (k / ROUNDS), scope=request.scope,
                                   allow_empty_layers=request.allow_empty_layers)
        return mask


SOURCE = SynFlow()
