"""Loss along directions in weight space: Li et al. (2018) surfaces, Yao et al. (2020) lines.

Random directions are filter-normalized: each filter (output-channel slice of a conv or
linear weight) of a Gaussian direction is rescaled to the norm of the same filter of the
weights, so a step of 1 moves every filter by its own size and nets with different weight
scales (or sparsities) are comparable. For a sparse net the direction is masked: moving
a pruned weight would leave the ticket. BatchNorm parameters and biases (all 1-D
parameters) get a zero direction, as in Li et al.

Each parameter's Gaussian is drawn from a generator seeded by the seed and the parameter's
name, so models that share a parameter get the same draw for it whatever other parameters they
have (an injected skip adds some): the compared spends of one ticket, analysed with one seed,
share their directions, each filter-normalized to its own weights.

Losses are evaluated with `torch.func.functional_call` on theta + a*d1 + b*d2, so the
model's own parameters are never written; eval mode, as for the Hessian.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from ..masks import Mask
from .hessian import Batch, LossFn, eval_mode, model_device, on_device

Direction = dict[str, torch.Tensor]


def _parameter_seed(seed: int, name: str) -> int:
    """A generator seed for one parameter: the same for the same (seed, name) in any model."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def random_direction(model: nn.Module, mask: Mask | None = None, seed: int = 0) -> Direction:
    """A filter-normalized Gaussian direction over the trainable parameters (masked, 1-D zeroed).
    Drawn on the CPU from `seed` and each parameter's name, so it is the same on any device and
    for a parameter of the same name in another model."""
    if mask is not None:
        mask.check_fits(model)
    direction: Direction = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        generator = torch.Generator().manual_seed(_parameter_seed(seed, name))
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        w = p.detach()
        if mask is not None and name in mask:
            keep = mask[name].to(device=p.device, dtype=p.dtype)
            d, w = d * keep, w * keep
        # Per filter: ||d_i|| -> ||w_i|| (an all-pruned filter stays zero).
        dims = tuple(range(1, p.dim()))
        norm = torch.linalg.vector_norm
        d = d * (norm(w, dim=dims, keepdim=True) / (norm(d, dim=dims, keepdim=True) + 1e-10))
        direction[name] = d
    return direction


def _mean_loss(model: nn.Module, batches: list[Batch], loss_fn: LossFn, params: dict[str, torch.Tensor]) -> float:
    total = sum(len(y) for _, y in batches)
    loss = sum(float(loss_fn(functional_call(model, params, (x,)), y)) * len(y) for x, y in batches)
    return loss / total


@torch.no_grad()
def loss_surface_2d(model: nn.Module, batches: Sequence[Batch], d1: Direction, d2: Direction,
                    alphas: Sequence[float], betas: Sequence[float], *,
                    loss_fn: LossFn = F.cross_entropy) -> np.ndarray:
    """Mean loss over `batches` at theta + a*d1 + b*d2; shape (len(alphas), len(betas)),
    element [i, j] at (alphas[i], betas[j]). Parameters named in neither direction stay put."""
    params = dict(model.named_parameters())
    names = sorted(set(d1) | set(d2))
    unknown = [n for n in names if n not in params]
    if unknown:
        raise KeyError(f"direction names parameters the model does not have: {unknown[:5]}")
    batches = on_device(batches, model_device(model))
    zero = {n: torch.zeros_like(params[n]) for n in names}
    d1, d2 = {**zero, **d1}, {**zero, **d2}
    out = np.empty((len(alphas), len(betas)))
    grid = [(i, j) for i in range(len(alphas)) for j in range(len(betas))]
    with eval_mode(model):
        for i, j in tqdm(grid, desc="loss landscape", unit="point", disable=None, leave=False):
            moved = {n: params[n] + float(alphas[i]) * d1[n] + float(betas[j]) * d2[n] for n in names}
            out[i, j] = _mean_loss(model, batches, loss_fn, moved)
    return out


def loss_along(model: nn.Module, batches: Sequence[Batch], direction: Direction, alphas: Sequence[float], *,
               loss_fn: LossFn = F.cross_entropy) -> np.ndarray:
    """Mean loss at theta + a*direction for each a in `alphas`: a 1-D surface along a random
    direction (Li et al.) or along the unit top Hessian eigenvector (Yao et al.)."""
    return loss_surface_2d(model, batches, direction, {}, alphas, [0.0], loss_fn=loss_fn)[:, 0]


def loss_surface_1d(model: nn.Module, batches: Sequence[Batch], direction: Direction, alphas: Sequence[float], *,
                    loss_fn: LossFn = F.cross_entropy) -> np.ndarray:
    """Li et al.'s 1-D plot: the loss along a (filter-normalized) direction."""
    return loss_along(model, batches, direction, alphas, loss_fn=loss_fn)


def save_npz(path: str | Path, **arrays: object) -> Path:
    """Write `arrays` (anything np.asarray takes) to one .npz file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object: np.savez would append '.npz' to a bare name
        np.savez(f, **{name: np.asarray(a) for name, a in arrays.items()})
    return path
