"""Analyse spent tickets from the artifact store: the glue behind `python -m lth_core analyze`
and the sweeps' `--analyze` / `--analyze-epochs`.

The spend named by the config is analysed in full (activation sparsity, Hessian
eigenvalues, loss landscape in weight and in input space), on its final weights or on its
snapshot at an epoch; the same spend with each activation in `activations` is spent too
(cached in the store) so the activation-sparsity table compares them side by side, as the
paper's Table A1 does. The landscapes' directions and the input-space images are seeded by the
ticket's seed, so every spend of one ticket is measured along the same directions.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lth_core.analysis import (Batch, activation_sparsity, format_table, input_landscape, loss_surface_2d,
                               plot_activation_sparsity, random_direction, run_all, top_hessian_eigenvalues)
from lth_core.config import SpendConfig, replace
from lth_core.data import Dataset, iterate_batches
from lth_core.lottery import StageCallback, prepare_spend, spend
from lth_core.masks import Mask
from lth_core.paths import spend_snapshot, spend_weights
from lth_core.store import ArtifactStore


def load_spent_model(config: SpendConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None = None,
                     epoch: int | None = None) -> tuple[nn.Module, Mask | None, Dataset]:
    """Spend (or read back) `config` and return its model in eval mode with its final weights, or
    with its weights after `epoch` (a spend stored without that snapshot is trained again to keep
    it: never the final weights in its place), its mask and data."""
    if epoch is not None:
        config = replace(config, snapshot_epochs=(*config.snapshot_epochs, epoch))
    spend(config, store, on_stage_epoch=on_stage_epoch)
    run = prepare_spend(config, store, with_init=False)
    path = spend_weights(config.key) if epoch is None else spend_snapshot(config.key, epoch)
    run.model.load_state_dict(store.read_tensors(path, device=run.runtime.device))
    return run.model.eval(), run.mask, run.dataset


def seeded_images(dataset: Dataset, split: str, count: int, seed: int) -> Batch:
    """`count` images of a split (normalised, without augmentation) and their labels, picked by
    `seed`: the fixed image set every spend of one ticket is measured on."""
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    size = min(count, len(dataset.split(split)[1]))
    return next(iterate_batches(dataset, split, size, generator=generator, shuffle=True))


def analyze_spend(config: SpendConfig, store: ArtifactStore, out_dir: Path, *, epoch: int | None = None,
                  activations: tuple[str, ...] = ("relu", "swish"), threshold: float = 1e-3, top_k: int = 1,
                  grid: int = 11, batches: int = 4, batch_size: int = 128,
                  on_stage_epoch: StageCallback | None = None) -> dict[str, Any]:
    """Run every analysis on `config`'s spent model, final or at `epoch` (`batches` train batches for
    the Hessian and the landscape, `batches` test batches for activations, as many seeded test
    images for the input-space landscape) and compare activation sparsity across `activations`
    (at the same epoch). Writes plots, arrays and `analysis.json` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model, mask, dataset = load_spent_model(config, store, on_stage_epoch, epoch)
    train = list(itertools.islice(iterate_batches(dataset, "train", batch_size), batches))
    test = list(itertools.islice(iterate_batches(dataset, "test", batch_size), batches))
    result = run_all(model, train, test, mask=mask, out_dir=out_dir, threshold=threshold, k=top_k, grid=grid,
                     seed=config.seed, direction_seed=config.ticket.seed,
                     input_images=seeded_images(dataset, "test", batches * batch_size, config.ticket.seed))

    compared = {config.tweaks.activation: activation_sparsity(model, test, threshold)}
    for name in activations:
        if name not in compared:
            labelled = (None if on_stage_epoch is None  # the comparison spend's bar names its activation
                        else lambda stage, record, name=name: on_stage_epoch(f"{stage} ({name})", record))
            other, _, _ = load_spent_model(replace(config, **{"tweaks.activation": name}), store, labelled, epoch)
            compared[name] = activation_sparsity(other, test, threshold)
    result["table"] = format_table(compared)
    result["activation_comparison"] = {name: r.to_dict() for name, r in compared.items()}
    result["activation_comparison_png"] = str(plot_activation_sparsity(compared, out_dir / "activation_sparsity.png"))
    result["spend_key"] = config.key
    result["epoch"] = epoch  # None: the final weights
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    return result


SWEEP_GRID = 9  # points per axis of a sweep's landscapes (0 among them)
SWEEP_INPUT_SPAN = 0.5


def spend_analysis(config: SpendConfig, store: ArtifactStore, *, epoch: int | None = None, threshold: float = 1e-3,
                   batches: int = 2, batch_size: int = 128, grid: int = SWEEP_GRID) -> dict[str, Any]:
    """Cheap analyses of a finished spend, final or at `epoch`, for a tracking backend: `metrics`
    (activation sparsity overall and per stage on test batches, top Hessian eigenvalue on train
    batches) and the arrays of the report's landscape figures: the 2-D weight-space surface on
    the train batches (`grid` x `grid`, steps in [-1, 1]) and the input-space views on as many
    seeded test images (eps in [-0.5, 0.5]), along directions seeded by the ticket's seed."""
    model, mask, dataset = load_spent_model(config, store, epoch=epoch)
    train = list(itertools.islice(iterate_batches(dataset, "train", batch_size), batches))
    test = list(itertools.islice(iterate_batches(dataset, "test", batch_size), batches))
    sparsity = activation_sparsity(model, test, threshold)
    eigen = top_hessian_eigenvalues(model, train, mask=mask, max_iter=50, seed=config.seed)
    seed = config.ticket.seed
    steps = np.linspace(-1.0, 1.0, grid)
    surface = loss_surface_2d(model, train, random_direction(model, mask, seed), random_direction(model, mask, seed + 1),
                              steps, steps)
    images, labels = seeded_images(dataset, "test", batches * batch_size, seed)
    inputs = input_landscape(model, images, labels, np.linspace(-SWEEP_INPUT_SPAN, SWEEP_INPUT_SPAN, grid), seed=seed)
    return {"epoch": epoch,
            "metrics": {"act_sparsity": sparsity.overall,
                        **{f"act_sparsity_{stage}": count.fraction for stage, count in sparsity.stages.items()},
                        "hessian_top_eigenvalue": eigen.eigenvalues[0]},
            "landscape": {"steps": steps.tolist(), "surface_2d": surface.tolist(), "direction_seed": seed},
            "input_landscape": {name: values.tolist() for name, values in inputs.items()}}
