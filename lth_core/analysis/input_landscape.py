"""Loss in input space (the paper's Figure 11, "w.r.t. input space"): the mean loss on a fixed
set of images as every image x is moved to x + eps*d.

Each direction is normalised per image to that image's own norm, in the normalised pixel space
the model sees: eps = 0.1 moves every image by a tenth of its own size, whatever its contrast,
so images (and data sets) of different norms share one scale. A batch-wide norm would move
faint images by more than themselves and bright ones hardly at all.

Directions: a Gaussian drawn on the CPU from a seed (the same for every compared spend of one
ticket, on any device); the sign of the loss gradient with respect to each input (each
model's own steepest direction under a max-norm budget, as in FGSM); and for the 2-D surface
two Gaussians (seed, seed + 1). Eval mode, as for the weight-space landscape; the model is
only read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .hessian import LossFn, eval_mode


def per_image_normalized(direction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """`direction` rescaled image by image to the norm of the same image (a zero direction stays zero)."""
    dims = tuple(range(1, images.dim()))
    norm = torch.linalg.vector_norm
    return direction * (norm(images, dim=dims, keepdim=True) / norm(direction, dim=dims, keepdim=True).clamp_min(1e-12))


def random_input_direction(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction per image, drawn on the CPU from `seed`, normalised per image."""
    generator = torch.Generator().manual_seed(seed)
    d = torch.randn(images.shape, generator=generator, dtype=torch.float32).to(images.device, images.dtype)
    return per_image_normalized(d, images)


def gradient_sign_direction(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """sign(d loss / d x) per image, normalised per image: the direction that raises each image's
    loss fastest for its size in the max norm."""
    with eval_mode(model), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x), labels), x)
    return per_image_normalized(grad.sign(), images)


@torch.no_grad()
def input_loss_surface(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, d1: torch.Tensor,
                       d2: torch.Tensor | None, alphas: Sequence[float], betas: Sequence[float], *,
                       loss_fn: LossFn = F.cross_entropy, batch_size: int = 512) -> np.ndarray:
    """Mean loss over the images at x + a*d1 + b*d2; shape (len(alphas), len(betas)), element
    [i, j] at (alphas[i], betas[j]). `d2=None` is a zero direction."""
    d2 = torch.zeros_like(d1) if d2 is None else d2
    out = np.empty((len(alphas), len(betas)))
    grid = [(i, j) for i in range(len(alphas)) for j in range(len(betas))]
    with eval_mode(model):
        for i, j in tqdm(grid, desc="input landscape", unit="point", disable=None, leave=False):
            total = 0.0
            for start in range(0, len(labels), batch_size):
                part = slice(start, start + batch_size)
                x = images[part] + float(alphas[i]) * d1[part] + float(betas[j]) * d2[part]
                total += float(loss_fn(model(x), labels[part])) * len(labels[part])
            out[i, j] = total / len(labels)
    return out


def input_loss_along(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, direction: torch.Tensor,
                     steps: Sequence[float], *, loss_fn: LossFn = F.cross_entropy) -> np.ndarray:
    """Mean loss over the images at x + eps*direction for each eps in `steps`."""
    return input_loss_surface(model, images, labels, direction, None, steps, [0.0], loss_fn=loss_fn)[:, 0]


def input_landscape(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: Sequence[float], *,
                    seed: int = 0, loss_fn: LossFn = F.cross_entropy) -> dict[str, np.ndarray]:
    """The three views at `steps` (eps in both axes of the surface): `random_1d` along the seeded
    Gaussian, `gradient_sign_1d` along the model's own gradient sign, `surface_2d` over the
    Gaussians seeded `seed` and `seed + 1`."""
    random_1 = random_input_direction(images, seed)
    random_2 = random_input_direction(images, seed + 1)
    sign = gradient_sign_direction(model, images, labels, loss_fn)
    return {"steps": np.asarray(steps, dtype=float),
            "random_1d": input_loss_along(model, images, labels, random_1, steps, loss_fn=loss_fn),
            "gradient_sign_1d": input_loss_along(model, images, labels, sign, steps, loss_fn=loss_fn),
            "surface_2d": input_loss_surface(model, images, labels, random_1, random_2, steps, steps,
                                             loss_fn=loss_fn)}
