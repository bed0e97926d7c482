"""Analyse spent tickets from the artifact store: the glue behind `python -m lth_core analyze`.

The spend named by the config is analysed in full (activation sparsity, Hessian
eigenvalues, loss landscape); the same spend with each activation in
`activations` is spent too (cached in the store) so the activation-sparsity
table compares them side by side, as the paper's Table A1 does.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from torch import nn

from lth_core.analysis import (activation_sparsity, format_table, plot_activation_sparsity, run_all,
                               top_hessian_eigenvalues)
from lth_core.config import SpendConfig, replace
from lth_core.data import Dataset, iterate_batches
from lth_core.lottery import StageCallback, prepare_spend, spend
from lth_core.masks import Mask
from lth_core.paths import spend_weights
from lth_core.store import ArtifactStore


def load_spent_model(config: SpendConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None = None
                     ) -> tuple[nn.Module, Mask | None, Dataset]:
    """Spend (or read back) `config` and return its trained model in eval mode, its mask and data."""
    spend(config, store, on_stage_epoch=on_stage_epoch)
    run = prepare_spend(config, store, with_init=False)
    run.model.load_state_dict(store.read_tensors(spend_weights(config.key), device=run.runtime.device))
    return run.model.eval(), run.mask, run.dataset


def analyze_spend(config: SpendConfig, store: ArtifactStore, out_dir: Path, *,
                  activations: tuple[str, ...] = ("relu", "swish"), threshold: float = 1e-3, top_k: int = 1,
                  grid: int = 11, batches: int = 4, batch_size: int = 128,
                  on_stage_epoch: StageCallback | None = None) -> dict[str, Any]:
    """Run every analysis on `config`'s spent model (`batches` train batches for the Hessian and the
    landscape, `batches` test batches for activations) and compare activation sparsity across
    `activations`. Writes plots, arrays and `analysis.json` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model, mask, dataset = load_spent_model(config, store, on_stage_epoch)
    train = list(itertools.islice(iterate_batches(dataset, "train", batch_size), batches))
    test = list(itertools.islice(iterate_batches(dataset, "test", batch_size), batches))
    result = run_all(model, train, test, mask=mask, out_dir=out_dir, threshold=threshold, k=top_k, grid=grid,
                     seed=config.seed)

    compared = {config.tweaks.activation: activation_sparsity(model, test, threshold)}
    for name in activations:
        if name not in compared:
            labelled = (None if on_stage_epoch is None  # the comparison spend's bar names its activation
                        else lambda stage, record, name=name: on_stage_epoch(f"{stage} ({name})", record))
            other, _, _ = load_spent_model(replace(config, **{"tweaks.activation": name}), store, labelled)
            compared[name] = activation_sparsity(other, test, threshold)
    result["table"] = format_table(compared)
    result["activation_comparison"] = {name: r.to_dict() for name, r in compared.items()}
    result["activation_comparison_png"] = str(plot_activation_sparsity(compared, out_dir / "activation_sparsity.png"))
    result["spend_key"] = config.key
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    return result


def spend_metrics(config: SpendConfig, store: ArtifactStore, *, threshold: float = 1e-3, batches: int = 2,
                  batch_size: int = 128) -> dict[str, float]:
    """Cheap analyses of a finished spend as flat metrics (for a tracking backend):
    activation sparsity overall and per stage on test batches, top Hessian eigenvalue on train batches."""
    model, mask, dataset = load_spent_model(config, store)
    train = list(itertools.islice(iterate_batches(dataset, "train", batch_size), batches))
    test = list(itertools.islice(iterate_batches(dataset, "test", batch_size), batches))
    sparsity = activation_sparsity(model, test, threshold)
    eigen = top_hessian_eigenvalues(model, train, mask=mask, max_iter=50, seed=config.seed)
    return {"act_sparsity": sparsity.overall,
            **{f"act_sparsity_{stage}": count.fraction for stage, count in sparsity.stages.items()},
            "hessian_top_eigenvalue": eigen.eigenvalues[0]}
