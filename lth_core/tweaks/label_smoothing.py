"""Label smoothing: train against (1 - eps) * onehot + eps / K instead of the one-hot target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross-entropy with smoothed targets, averaged over the batch; eps = 0 is plain CE.

    Written out from log_softmax, so the library's `label_smoothing=` option can serve as an
    independent check. Computed in float32 so bf16 logits lose no precision in the loss.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    # sum_k (eps / K) * -log p_k: the uniform part of the target.
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - eps) * nll + eps * uniform).mean()
