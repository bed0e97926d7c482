"""Label smoothing: train against (1 - eps) * onehot + eps / K instead of the one-hot target."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lth_core.hooks import LossFn
from lth_core.schema import require
from lth_core.tweaks.base import SpendContext, Tweak


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


class LabelSmoothing(Tweak):
    name = "label_smoothing"
    summary = "train against smoothed targets: (1 - eps) * onehot + eps / K"
    value_type = float
    default = 0.0
    search = (0.0, 0.1)
    example = 0.1

    def validate(self, value: Any) -> None:
        require(0 <= value < 1, self.path, f"must be in [0, 1), got {value}")

    def label(self, value: Any) -> str:
        return f"ls{value:g}"

    def loss(self, value: Any, inner: LossFn, ctx: SpendContext) -> LossFn:
        """Replaces the hard-target cross-entropy (so it comes before any tweak that wraps it)."""
        def smoothed(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return smoothed_cross_entropy(logits, labels, value)
        return smoothed


TWEAK = LabelSmoothing()
