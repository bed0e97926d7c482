"""Layer-wise re-scaled initialization: GradInit (Zhu et al. 2021) with the SGD objective.

Every weight and bias tensor theta_i of a Conv2d, Linear or affine BatchNorm2d layer gets one
scale alpha_i >= 0, starting at 1. The initial weights are kept and only scaled, so the search
works for any initialization (epoch 0 or a rewound one) and for any mask. The scales are
learned so that one normalized SGD step from alpha * theta lowers the loss the most:

    minimize  L(S2; alpha*theta - eta * g / ||g||) / eta,   g = grad L(S1; alpha*theta),

differentiating through g, subject to ||g|| <= gamma: an iteration whose gradient norm is over
gamma instead takes a step that lowers ||g||.

S1 and S2 share half their samples, as in the authors' code (there S1 = B0 + B1 and
S2 = B0 + B2 for three half-size batches): each iteration draws a batch A and takes
S1 = A[:b]; an objective step draws a second batch B and takes S2 = A[:b/2] + B[:b - b/2].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.dropout import _DropoutNd
from tqdm import tqdm

from lth_core.masks import Mask
from lth_core.schema import require
from lth_core.tweaks.base import SpendContext, Tweak

if TYPE_CHECKING:
    from lth_core.data import Dataset


@dataclass(frozen=True)
class RescaleInitConfig:
    """GradInit's search: one non-negative scale per weight/bias tensor, learned with Adam."""

    iterations: int = field(default=100, metadata={"help": "Adam steps of the scale search"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the scales"})
    eta: float = field(default=0.1, metadata={"help": "length of the normalised look-ahead SGD step"})
    gamma: float = field(default=1.0, metadata={"help": "bound on the gradient norm"})
    min_scale: float = field(default=0.01, metadata={"help": "lower bound of a weight's scale"})
    batch_size: int = field(default=128, metadata={"help": "images per search batch"})

    def __post_init__(self) -> None:
        path = "tweaks.rescale_init"
        require(self.iterations >= 1, f"{path}.iterations", f"must be >= 1, got {self.iterations}")
        require(self.lr > 0, f"{path}.lr", f"must be > 0, got {self.lr}")
        require(self.eta > 0, f"{path}.eta", f"must be > 0, got {self.eta}")
        require(self.gamma > 0, f"{path}.gamma", f"must be > 0, got {self.gamma}")
        require(0 <= self.min_scale <= 1, f"{path}.min_scale", f"must be in [0, 1], got {self.min_scale}")
        require(self.batch_size >= 2, f"{path}.batch_size", f"must be >= 2, got {self.batch_size}")

SCALED_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def scaled_parameter_names(model: nn.Module) -> list[str]:
    """Names of the tensors that get a scale: weight and bias of every conv, linear and affine
    BN layer. Other parameters (e.g. a learnable activation slope) are left as they are."""
    params = dict(model.named_parameters())
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, SCALED_LAYERS):
            for kind in ("weight", "bias"):
                name = f"{module_name}.{kind}" if module_name else kind
                if name in params:
                    names.append(name)
    return names


def rescale_init(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 cfg: RescaleInitConfig, *, mask: Mask | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 on_progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Learn the scales, multiply them into `model`'s parameters in place, and return them
    (parameter name -> alpha) for logging.

    `batches` yields (images, labels) with at least `cfg.batch_size` samples each; one or two are
    drawn per iteration, so pass an endless iterator. The search runs the network functionally
    (the model is not touched until the end) with BN in train mode on copies of its buffers, so
    the running statistics stay as they were, and with dropout off. With a `mask`, the pruned
    weights are zeroed first and the look-ahead step is masked too, so they stay exactly zero.
    `on_progress(iteration, loss)` gets the 1-based iteration and the S1 loss after each one.
    """
    names = scaled_parameter_names(model)
    if not names:
        return {}
    if mask is not None:
        mask.apply_(model)
    params = dict(model.named_parameters())
    thetas = [params[n].detach() for n in names]
    device = thetas[0].device
    step_masks = {n: mask[n].to(device=device, dtype=params[n].dtype)
                  for n in names if mask is not None and n in mask}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    scales = torch.ones(len(names), device=device, requires_grad=True)
    floor = torch.tensor([0.0 if n.endswith("bias") else cfg.min_scale for n in names], device=device)
    optimizer = torch.optim.Adam([scales], lr=cfg.lr)
    batches = iter(batches)
    b, half = cfg.batch_size, cfg.batch_size // 2

    def loss_at(weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**dict(zip(names, weights)), **buffers}, (x,))
        return loss_fn(logits, y)

    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, _DropoutNd):
            m.eval()
    try:
        # A bar in a terminal (a CLI spend); none where stderr is a log (a Ray trial).
        for iteration in tqdm(range(1, cfg.iterations + 1), desc="GradInit", disable=None, leave=False):
            x1, y1 = _draw(batches, b, device)
            weights = [s * t for s, t in zip(scales.unbind(), thetas)]
            loss1 = loss_at(weights, x1, y1)
            grads = torch.autograd.grad(loss1, weights, create_graph=True)
            grads = [g * step_masks[n] if n in step_masks else g for n, g in zip(names, grads)]
            grad_norm = torch.sqrt(sum(g.square().sum() for g in grads))
            if grad_norm.item() > cfg.gamma:
                objective = grad_norm
            else:
                x2, y2 = _draw(batches, b - half, device)
                x2, y2 = torch.cat([x1[:half], x2]), torch.cat([y1[:half], y2])
                stepped = [w - cfg.eta * g / grad_norm for w, g in zip(weights, grads)]
                objective = loss_at(stepped, x2, y2) / cfg.eta
            (scales.grad,) = torch.autograd.grad(objective, [scales])
            torch.nn.utils.clip_grad_norm_([scales], 1.0)
            optimizer.step()
            with torch.no_grad():
                scales.clamp_(min=floor)
            if on_progress is not None:
                on_progress(iteration, loss1.item())
    finally:
        for m, training in modes.items():
            m.train(training)

    with torch.no_grad():
        for n, s in zip(names, scales.unbind()):
            params[n].mul_(s.to(params[n].dtype))
    return dict(zip(names, scales.tolist()))


def _draw(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], n: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = next(batches)
    if len(images) < n:
        raise ValueError(f"rescale_init needs batches of at least {n} samples, got {len(images)}")
    return images[:n].to(device), labels[:n].to(device)


class RescaleInit(Tweak):
    name = "rescale_init"
    summary = "GradInit: re-scale each layer's starting weights so the first SGD steps lower the loss most"
    section = RescaleInitConfig
    search = ("off", "on")

    def check_dataset(self, value: Any, dataset: Dataset) -> None:
        require(value.batch_size <= len(dataset.train_y), f"{self.path}.batch_size",
                f"a search batch of {value.batch_size} images is larger than the training set "
                f"({len(dataset.train_y)} images); lower it")

    def label(self, value: Any) -> str:
        """`gradinit` at the defaults, `gradinit(iterations=390)` otherwise: the report groups runs
        by label, so two settings in one sweep must not share one."""
        return "gradinit" + self.changed_settings(value)

    def init(self, value: Any, model: nn.Module, ctx: SpendContext) -> dict[str, Any]:
        """Runs in fp32 whatever the recipe's precision: it differentiates twice."""
        batches = ctx.train_batches(value.batch_size, ctx.spend.seed)
        return {"scales": rescale_init(model, batches, value, mask=ctx.mask)}


TWEAK = RescaleInit()
