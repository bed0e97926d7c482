"""MLflow logging for trials, laid out as docs/tracking.md says.

Trials log through `MlflowClient` (no global fluent state in worker processes),
each into a child run nested under the sweep's parent run. A trial that is
restarted finds its own run again by its `trial_key` tag and keeps logging there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from lth_core.config import SpendConfig, TicketConfig


def ticket_params(ticket: TicketConfig) -> dict[str, str]:
    return {"dataset": ticket.data.name, "arch": ticket.model.arch, "width": f"{ticket.model.width:g}",
            "seed": str(ticket.seed), "prune_method": ticket.pruning.method}


def spend_params(spend: SpendConfig, sparsity: float) -> dict[str, str]:
    tweaks = spend.tweaks
    return {
        **ticket_params(spend.ticket),
        "seed": str(spend.seed),
        "level": str(spend.level),
        "sparsity": f"{sparsity:.6f}",
        "activation": tweaks.activation,
        "skip": tweaks.skip,
        "label_smoothing": f"{tweaks.label_smoothing:g}",
        "kd_alpha": f"{tweaks.kd.alpha:g}" if tweaks.kd else "0",
        "kd_temperature": f"{tweaks.kd.temperature:g}" if tweaks.kd else "0",
        "rescale_init": "true" if tweaks.rescale_init else "false",
        "rewind_epoch": str(tweaks.rewind_epoch),
    }


class TrialRun:
    """One trial's MLflow child run."""

    def __init__(self, tracking_uri: str, parent_run_id: str, trial_key: str, stage: str,
                 tags: Mapping[str, str], params: Mapping[str, str], run_name: str):
        self.client = MlflowClient(tracking_uri)
        parent = self.client.get_run(parent_run_id)
        existing = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.trial_key = '{trial_key}'",
            max_results=1)
        self.resumed = bool(existing)
        if existing:
            self.run_id = existing[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            all_tags = {"mlflow.parentRunId": parent_run_id, "stage": stage, "trial_key": trial_key, **tags}
            run = self.client.create_run(parent.info.experiment_id, tags=all_tags, run_name=run_name)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self._last_ms = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Strictly increasing timestamps: a final value logged at the last epoch's step must be
        # the run's latest value even within the same millisecond.
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), self._last_ms, step or 0)
                                                    for k, v in metrics.items()])

    def logged_steps(self, key: str) -> set[int]:
        """Steps already logged for a metric (only a run an earlier attempt started can have any)."""
        if not self.resumed:
            return set()
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
