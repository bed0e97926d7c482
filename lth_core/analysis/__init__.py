"""The paper's analyses of a (sparse) net: activation sparsity, top Hessian eigenvalues,
loss landscapes in weight and in input space. Pure PyTorch; `run_all` runs them and writes
their files."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..masks import Mask
from .activation_sparsity import (ACTIVATION_TYPES, ActivationSparsity, Count, activation_sparsity, format_table,
                                  is_activation, stage_of)
from .hessian import Batch, HessianObserver, HessianResult, HessianTracker, LossFn, top_hessian_eigenvalues
from .input_landscape import (gradient_sign_direction, input_landscape, input_loss_along, input_loss_surface,
                              per_image_normalized, random_input_direction)
from .landscape import loss_along, loss_surface_1d, loss_surface_2d, random_direction, save_npz
from .plots import (plot_activation_sparsity, plot_eigenvalue_history, plot_lines, plot_surface_1d, plot_surface_2d,
                    plot_surfaces_side_by_side, shared_levels)

__all__ = [
    "ACTIVATION_TYPES", "ActivationSparsity", "Count", "HessianObserver", "HessianResult", "HessianTracker", "activation_sparsity",
    "format_table", "gradient_sign_direction", "input_landscape", "input_loss_along", "input_loss_surface",
    "is_activation", "loss_along", "loss_surface_1d", "loss_surface_2d", "per_image_normalized",
    "plot_activation_sparsity", "plot_eigenvalue_history", "plot_lines", "plot_surface_1d", "plot_surface_2d",
    "plot_surfaces_side_by_side", "random_direction", "random_input_direction", "run_all", "save_npz",
    "shared_levels", "stage_of", "top_hessian_eigenvalues",
]


def run_all(model: nn.Module, train_batches: Sequence[Batch], eval_batches: Sequence[Batch], *,
            mask: Mask | None, out_dir: str | Path, threshold: float = 1e-3, k: int = 1, max_iter: int = 50,
            grid: int = 11, span: float = 1.0, seed: int = 0, direction_seed: int | None = None,
            input_images: Batch | None = None, input_span: float = 0.5,
            loss_fn: LossFn = F.cross_entropy) -> dict[str, Any]:
    """Activation sparsity on `eval_batches`; top-k Hessian eigenvalues of the loss on `train_batches`;
    on `train_batches` the 1-D and 2-D surfaces along two filter-normalized random directions
    (steps in [-span, span], `grid` points per axis, seeded `direction_seed` and `direction_seed + 1`,
    default `seed`); on `eval_batches` the loss along the top eigenvector (unit norm, same steps;
    the paper's Figure 10 shows test loss); with `input_images` (a fixed batch of images and
    labels) the loss in input space (`input_landscape`, eps in [-input_span, input_span],
    directions seeded like the weight-space ones).

    Writes `landscape.npz`, `input_landscape.npz`, PNGs and `analysis.json` into `out_dir` and
    returns what the JSON holds. The model is only read: its parameters and train/eval modes are
    unchanged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_batches, eval_batches = list(train_batches), list(eval_batches)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    sparsity = activation_sparsity(model, eval_batches, threshold)
    seconds["activation_sparsity"] = time.perf_counter() - start

    start = time.perf_counter()
    hessian = top_hessian_eigenvalues(model, train_batches, mask=mask, loss_fn=loss_fn, k=k,
                                      max_iter=max_iter, tol=1e-3, seed=seed)
    seconds["hessian"] = time.perf_counter() - start

    start = time.perf_counter()
    direction_seed = seed if direction_seed is None else direction_seed
    steps = np.linspace(-span, span, grid)
    d1, d2 = random_direction(model, mask, direction_seed), random_direction(model, mask, direction_seed + 1)
    surface_1d = loss_surface_1d(model, train_batches, d1, steps, loss_fn=loss_fn)
    surface_2d = loss_surface_2d(model, train_batches, d1, d2, steps, steps, loss_fn=loss_fn)
    along_top = loss_along(model, eval_batches, hessian.eigenvectors[0], steps, loss_fn=loss_fn)
    seconds["landscape"] = time.perf_counter() - start

    inputs = None
    if input_images is not None:
        start = time.perf_counter()
        images, labels = input_images
        inputs = input_landscape(model, images, labels, np.linspace(-input_span, input_span, grid),
                                 seed=direction_seed, loss_fn=loss_fn)
        seconds["input_landscape"] = time.perf_counter() - start

    paths = {
        "landscape": save_npz(out / "landscape.npz", steps=steps, surface_1d=surface_1d, surface_2d=surface_2d,
                              along_top_eigenvector=along_top),
        "surface_1d_png": plot_surface_1d(steps, surface_1d, out / "surface_1d.png",
                                          "train loss, random filter-normalized direction"),
        "surface_2d_png": plot_surface_2d(steps, steps, surface_2d, out / "surface_2d.png",
                                          "train loss, two random filter-normalized directions"),
        "along_top_eigenvector_png": plot_surface_1d(steps, along_top, out / "along_top_eigenvector.png",
                                                     "eval loss along the top Hessian eigenvector"),
        "activation_sparsity_png": plot_activation_sparsity({"model": sparsity}, out / "activation_sparsity.png"),
    }
    if inputs is not None:
        paths["input_landscape"] = save_npz(out / "input_landscape.npz", **inputs)
        paths["input_1d_png"] = plot_lines(inputs["steps"], {
            "random direction": {"loss": inputs["random_1d"]},
            "gradient sign": {"loss": inputs["gradient_sign_1d"]}}, out / "input_1d.png",
            "test loss in input space (direction per image = its norm)")
        paths["input_surface_2d_png"] = plot_surface_2d(inputs["steps"], inputs["steps"], inputs["surface_2d"],
                                                        out / "input_surface_2d.png",
                                                        "test loss in input space, two random directions")
    summary = {
        "activation_sparsity": sparsity.to_dict(),
        "hessian": {"eigenvalues": hessian.eigenvalues, "iterations": hessian.iterations,
                    "max_iter": max_iter, "masked": mask is not None},
        "landscape": {"steps": steps.tolist(), "surface_1d": surface_1d.tolist(),
                      "along_top_eigenvector": along_top.tolist(), "direction_seed": direction_seed},
        **({"input_landscape": {"steps": inputs["steps"].tolist(), "random_1d": inputs["random_1d"].tolist(),
                                "gradient_sign_1d": inputs["gradient_sign_1d"].tolist(),
                                "images": len(input_images[1])}} if inputs is not None else {}),
        "batches": {"train": len(train_batches), "train_samples": sum(len(y) for _, y in train_batches),
                    "eval": len(eval_batches), "eval_samples": sum(len(y) for _, y in eval_batches)},
        "seconds": seconds,
        "paths": {name: str(p) for name, p in paths.items()},
    }
    summary["paths"]["analysis"] = str(out / "analysis.json")
    (out / "analysis.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
