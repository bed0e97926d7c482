"""Ray Tune trainable: re-train one (ticket, level, tweaks) combination.

Reports every epoch, with a `ray.tune.Checkpoint` holding the full training state
whenever the recipe's cadence wants one (`RecipeConfig.checkpoint_seconds`: the
first and last epoch, and before more than that many seconds go unsaved), and
resumes from `ray.tune.get_checkpoint()` after a failure or a restore, so a killed
trial ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from lth_core.config import SpendConfig
from lth_core.lottery import spend
from lth_core.store import ArtifactStore
from lth_core.training import EpochRecord, Payload
from trainables.common import (deterministic_errors, device_share, level_sparsities, report_epoch, resume_state,
                               spend_from_trial, tracked)
from tracking.runs import TrialRun


def spend_analyses(spend_cfg: SpendConfig, store: ArtifactStore, final: bool, **settings: Any) -> list[dict[str, Any]]:
    """Opt-in analyses of the spent ticket (`lth_core.analysis.run.spend_analysis`, with `settings`):
    at each epoch it keeps a snapshot of (`--analyze-epochs`), then of its final weights (`--analyze`)."""
    from lth_core.analysis.run import spend_analysis

    epochs = [*spend_cfg.snapshot_epochs, *([None] if final else [])]
    return [spend_analysis(spend_cfg, store, epoch=epoch, **settings) for epoch in epochs]


def spend_trainable(config: dict[str, Any]) -> None:
    with deterministic_errors():
        _spend_trainable(config)


def _spend_trainable(config: dict[str, Any]) -> None:
    spend_cfg = spend_from_trial(config)
    store = ArtifactStore(config["store"])
    observers = []
    if config.get("hessian_every"):  # the top Hessian eigenvalue every N epochs (Figure A12)
        from lth_core.analysis.hessian import HessianObserver

        observers.append(HessianObserver(int(config["hessian_every"]), seed=spend_cfg.seed))
    run = None
    if config.get("tracking_uri"):
        run = TrialRun.for_spend(config["tracking_uri"], config["parent_run_id"], spend_cfg,
                                 *level_sparsities(spend_cfg, store))
    reported = []

    def on_epoch(record: EpochRecord, payload: Payload) -> None:
        hessian = dict(observers[0].history).get(record.epoch) if observers else None
        if run is not None:  # an epoch an earlier attempt logged is not logged again
            run.log_epoch(record, hessian)
        report_epoch(record, payload, hessian)
        reported.append(record.epoch)

    with tracked(run):
        result = spend(spend_cfg, store, on_epoch=on_epoch, resume=resume_state(), persist_checkpoints=False,
                       observers=observers)
        analyses = spend_analyses(spend_cfg, store, bool(config.get("analyze")))
        if run is not None:
            for record in result["history"] if not reported else ():  # read back: still gets its curves
                run.log_epoch(record)
            final = next((a["metrics"] for a in analyses if a["epoch"] is None), {})
            run.log_spend_result(result, device_share=device_share(config), analysis=final)
            run.log_analyses(analyses)
    if not reported:  # read back from the store: one report with the final numbers
        tune.report({"epoch": 0, "val_acc": result["best_val_acc"], "best_val_acc": result["best_val_acc"],
                     "best_test_acc": result["test_acc"], "test_acc": result["test_acc"]})
