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
from trainables.common import ticket_from_trial
from trainables.tracking import TrialRun, ticket_params


def draw_trainable(config: dict[str, Any]) -> None:
    ticket = ticket_from_trial(config)
    run = None
    if config.get("tracking_uri"):
        run = TrialRun(config["tracking_uri"], config["parent_run_id"], trial_key=f"draw-{ticket.key}",
                       stage="draw", tags={"ticket_key": ticket.key, "tweak": "vanilla"},
                       params={**ticket_params(ticket), "levels": str(ticket.num_levels)},
                       run_name=f"draw {ticket.model.arch} w{ticket.model.width:g} seed{ticket.seed}")

    def on_stage_epoch(stage: str, record: EpochRecord) -> None:
        tune.report({"stage": stage, "epoch": record.epoch, "val_acc": record.val_acc,
                     "test_acc": record.test_acc})

    try:
        summary = draw(ticket, ArtifactStore(config["store"]), on_stage_epoch)
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    if run is not None:
        run.log_metrics({"dense_test_acc": summary["dense"]["test_acc"],
                         "dense_best_val_acc": summary["dense"]["best_val_acc"]})
        for level in summary["levels"]:
            run.log_metrics({"vanilla_test_acc": level["test_acc"], "vanilla_best_val_acc": level["best_val_acc"],
                             "level_sparsity": level["sparsity"]}, step=level["level"])
        run.log_metrics({"wall_seconds": summary["dense"]["wall_seconds"]
                         + sum(lv["wall_seconds"] for lv in summary["levels"])})
        run.finish()
    tune.report({"stage": "finished", "ticket_key": ticket.key, "dense_test_acc": summary["dense"]["test_acc"]})
