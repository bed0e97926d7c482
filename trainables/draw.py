"""Ray Tune trainable: draw (or read back) one ticket.

The draw's own progress is checkpointed in the artifact store (per stage, per
epoch), so a restarted draw trial picks up where the last one stopped; the
trainable only reports progress and logs the draw to MLflow.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from lth_core.lottery import draw
from lth_core.store import ArtifactStore
from lth_core.training import EpochRecord
from trainables.common import deterministic_errors, ticket_from_trial, tracked
from tracking.runs import TrialRun


def draw_trainable(config: dict[str, Any]) -> None:
    with deterministic_errors():  # a config, data or store error fails the trial once (sweeps.runner)
        _draw_trainable(config)


def _draw_trainable(config: dict[str, Any]) -> None:
    ticket = ticket_from_trial(config)
    run = None
    if config.get("tracking_uri"):
        run = TrialRun.for_draw(config["tracking_uri"], config["parent_run_id"], ticket)

    def on_stage_epoch(stage: str, record: EpochRecord) -> None:
        tune.report({"stage": stage, "epoch": record.epoch, "val_acc": record.val_acc,
                     "test_acc": record.test_acc})

    with tracked(run):
        summary = draw(ticket, ArtifactStore(config["store"]), on_stage_epoch)
        if run is not None:
            run.log_draw_summary(summary)
    dense = summary["dense"]  # None for a draw at initialisation: it trains nothing
    tune.report({"stage": "finished", "ticket_key": ticket.key,
                 **({"dense_test_acc": dense["test_acc"]} if dense is not None else {})})
