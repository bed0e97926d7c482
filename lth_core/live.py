"""Live weights: the prunable weights that some input of the data set's shape can reach.

A 3x3 tap that only ever multiplies zero padding is not live: on 8x8 digits, ResNet-18's last
stage runs on 1x1 maps, so eight of the nine taps of each of its kernels see nothing but padding.
Such weights keep their initial magnitude, compete in global pruning and count in every sparsity
figure, so results report the sparsity among live weights beside the nominal one.

The live set is computed exactly by a float64 probe on a copy of the model: every weight 1, every
bias and BatchNorm shift 0 and BatchNorm the identity, an all-ones input. Then a position of a
feature map is positive exactly when data reaches it (sums of non-negative terms, no cancellation),
and a weight is live exactly when some output position reads it from a positive input position:
`conv2d_weight` of the input's 0/1 indicator counts those positions per weight, in integers that
float64 holds exactly. Each prunable layer's output is replaced by its own 0/1 indicator, so the
values never grow along the depth. It depends on the architecture, width and input shape, not on
the weights or the seed, and is stored with the ticket (`paths.live_weights`).
"""

from __future__ import annotations

import copy
import torch
from torch import nn

from lth_core.masks import Mask, prunable_names


@torch.no_grad()
def live_weights(model: nn.Module, input_shape: tuple[int, int, int], prune_linear: bool = False) -> Mask:
    """The live prunable weights of `model` for inputs of shape (C, H, W), as a Mask (True = live)."""
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    for name, param in probe.named_parameters():
        param.fill_(0.0 if name.endswith("bias") else 1.0)
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    wanted = set(prunable_names(model, prune_linear))
    live: dict[str, torch.Tensor] = {}

    def reached(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            data = (inputs[0] > 0).to(torch.float64)
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros":
                    raise ValueError(f"{name}: live weights are worked out for zero padding, not "
                                     f"{module.padding_mode!r}")
                counts = torch.nn.grad.conv2d_weight(data, module.weight.shape, torch.ones_like(output),
                                                     stride=module.stride, padding=module.padding,
                                                     dilation=module.dilation, groups=module.groups)
            else:  # nn.Linear: an input feature reached by data makes its column live
                counts = data.reshape(-1, data.shape[-1]).sum(0).expand_as(module.weight)
            live[name] = counts > 0
            return (output > 0).to(torch.float64)

        return hook

    handles = [module.register_forward_hook(reached(f"{name}.weight" if name else "weight"))
               for name, module in probe.named_modules() if (f"{name}.weight" if name else "weight") in wanted]
    try:
        probe(torch.ones(1, *input_shape, dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(wanted - set(live))
    if missing:
        raise RuntimeError(f"the probe's forward pass never reached {', '.join(missing[:3])}")
    return Mask(live)


def weight_counts(live: Mask) -> dict[str, int]:
    """The prunable and the live weights, as draws store and report them."""
    return {"prunable": live.total, "live": live.kept}


def live_sparsity(mask: Mask | None, live: Mask) -> float:
    """Fraction of the live weights a mask removes (0 for the dense net, `mask` None)."""
    total = live.kept
    if mask is None or not total:
        return 0.0
    kept = sum(int((mask[name] & live[name]).sum()) for name in live)
    return 1.0 - kept / total
