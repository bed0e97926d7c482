"""Writing the MLflow layout (docs/tracking.md): the sweep's parent run and a child run per trial.

Everything logs through `MlflowClient` (no global fluent state, also in Ray worker processes);
MLflow is imported on first use, so that a sweep's --help and --dry-run stay quick.
A trial restarted by Ray finds its own child run again by its `trial_key` tag and keeps logging
there; an epoch already logged is not logged again, nor are final metrics already there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking import layout as L
from tracking.probe import redact

if TYPE_CHECKING:
    from lth_core.config import SpendConfig, TicketConfig

# ------------------------------------------------------------------------ params


def ticket_params(ticket: TicketConfig) -> dict[str, str]:
    return {"dataset": ticket.data.name, "arch": ticket.model.arch, "width": f"{ticket.model.width:g}",
            "seed": str(ticket.seed), "ticket_seed": str(ticket.seed), "prune_method": ticket.pruning.method}


def draw_params(ticket: TicketConfig) -> dict[str, str]:
    return {**ticket_params(ticket), "levels": str(ticket.num_levels)}


def spend_params(spend: SpendConfig, sparsity: float, live_sparsity: float | None = None) -> dict[str, str]:
    """A spend run's params; `sparsity` and `live_sparsity` are the level's measured sparsity,
    nominal and among live weights (None: a draw stored before live weights were counted). The
    tweaks' params come from their registry: one per tweak, in flat form, and one per setting of
    an enabled section."""
    from lth_core.tweaks import mlflow_params

    return {
        **ticket_params(spend.ticket),
        "seed": str(spend.seed),
        L.LEVEL: str(spend.level),
        L.SPARSITY: f"{sparsity:.6f}",
        **({L.LIVE_SPARSITY: f"{live_sparsity:.6f}"} if live_sparsity is not None else {}),
        **mlflow_params(spend.tweaks),
    }


# ------------------------------------------------------------------------ helpers


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


def search_all(client, experiment_ids: list[str], filter_string: str = "",
               order_by: list[str] | None = None) -> list:
    """Every run matching `filter_string`, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children_filter(parent_run_id: str, **tags: str) -> str:
    """A search filter for the child runs of `parent_run_id` with the given tag values."""
    return " and ".join([f"tags.{L.PARENT_RUN_ID} = '{parent_run_id}'",
                         *(f"tags.{k} = '{v}'" for k, v in tags.items())])


def redacted(value: Any) -> Any:
    """`value` with every string in it `redact`ed (a config dict before it is logged)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts beside a sqlite tracking database (`<db folder>/mlartifacts/<experiment>`), not in
    whatever folder the sweep was started from; None (the server decides) for anything else."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    folder = Path(tracking_uri[len(prefix):].split("?")[0]).parent / "mlartifacts" / experiment
    return folder.resolve().as_uri()


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """How to look at an experiment's runs: its runs page (`layout.runs_page_url`), on the tracking
    server, or on `mlflow ui` started on a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {L.runs_page_url(tracking_uri, experiment_id)}"
    return (f"mlflow ui --backend-store-uri {redact(tracking_uri)}  "
            f"# then open {L.runs_page_url(L.LOCAL_UI, experiment_id)}")


def experiment_of(tracking_uri: str, run_id: str) -> str:
    """The id of the experiment a run is in."""
    return _client(tracking_uri).get_run(run_id).info.experiment_id


# ------------------------------------------------------------------------ the parent run

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's model-training kind (not genai_development)



def start_parent_run(tracking_uri: str, sweep_name: str, preset: str, kind: str,
                     extra_tags: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> str:
    """The sweep's parent run (run name `sweep`, tag stage=sweep) in the experiment of its kind
    (`layout.experiment_name`); a rerun of the same sweep (a restore) reuses it and refreshes its
    tags. `config` (the sweep's settings) is logged once, as `sweep_config.json`. Tag values and
    the config are logged with any password masked."""
    from mlflow.entities import RunTag

    client = _client(tracking_uri)
    name = L.experiment_name(sweep_name, kind)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(name, artifact_location=artifact_location(tracking_uri, name)))
    kind_tags = getattr(experiment, "tags", None) or {}
    if kind_tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND and hasattr(client, "set_experiment_tag"):
        # MLflow 3 opens an experiment without this tag on its GenAI overview; this one opens on the runs.
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    tags = {L.STAGE: L.STAGE_SWEEP, L.SWEEP_NAME: sweep_name, L.PRESET: preset, L.KIND: kind, **(extra_tags or {})}
    tags = {k: redact(str(v)) for k, v in tags.items()}
    found = client.search_runs([experiment_id], filter_string=f"tags.{L.STAGE} = '{L.STAGE_SWEEP}' and "
                               f"tags.{L.KIND} = '{kind}'", order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id
    run = client.create_run(experiment_id, tags=tags, run_name=L.PARENT_RUN_NAME)
    if config is not None:
        client.log_dict(run.info.run_id, redacted(config), L.SWEEP_CONFIG_ARTIFACT)
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Close the parent run; child runs still RUNNING (a scheduler stopped them early) are marked KILLED."""
    close_stale_children(tracking_uri, run_id)
    _client(tracking_uri).set_terminated(run_id, status=status)


def close_stale_children(tracking_uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """Mark the child runs of `parent_run_id` still RUNNING as `status` (KILLED); returns how many.
    Called when a sweep session opens its parent run, before any trial of it starts: a child still
    RUNNING then was left so by a driver that was killed (kill -9, a lost machine) and could not
    close it. A trial that resumes finds its run again by its `trial_key` and sets it RUNNING."""
    client = _client(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    stale = search_all(client, [experiment_id], children_filter(parent_run_id) + " and attributes.status = 'RUNNING'")
    for child in stale:
        client.set_terminated(child.info.run_id, status=status)
    return len(stale)


def log_optuna_best(tracking_uri: str, parent_run_id: str,
                    best: Iterable[tuple[int, str | None, float | None, float | None]],
                    summary: Mapping[str, Any]) -> None:
    """An Optuna search's result on its parent run: per (level, ticket label or None, best
    validation accuracy, its test accuracy) the metrics `best_val_acc` and `best_test_acc`
    (step = level, suffixed with the label when a search has several tickets:
    `layout.optuna_best_metric`), and `summary` as `optuna_best.json`."""
    from mlflow.entities import Metric

    client = _client(tracking_uri)
    now = _now_ms()
    metrics = [Metric(L.optuna_best_metric(name, ticket), float(value), now, level)
               for level, ticket, val, test in best
               for name, value in ((L.OPTUNA_BEST_VAL_ACC, val), (L.OPTUNA_BEST_TEST_ACC, test))
               if value is not None]
    if metrics:
        client.log_batch(parent_run_id, metrics=metrics)
    client.log_dict(parent_run_id, redacted(summary), L.OPTUNA_BEST_ARTIFACT)


# ------------------------------------------------------------------------ a trial's child run


class TrialRun:
    """One trial's child run, nested under the sweep's parent run."""

    def __init__(self, tracking_uri: str, parent_run_id: str, trial_key: str, stage: str,
                 tags: Mapping[str, str], params: Mapping[str, str], run_name: str):
        from mlflow.entities import Param

        self.client = _client(tracking_uri)
        parent = self.client.get_run(parent_run_id)
        existing = self.client.search_runs([parent.info.experiment_id],
                                           filter_string=children_filter(parent_run_id, **{L.TRIAL_KEY: trial_key}),
                                           max_results=1)
        self.resumed = bool(existing)
        if existing:
            self.run_id = existing[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            all_tags = {L.PARENT_RUN_ID: parent_run_id, L.STAGE: stage, L.TRIAL_KEY: trial_key, **tags}
            run = self.client.create_run(parent.info.experiment_id, tags=all_tags, run_name=run_name)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self._logged_epochs = self.logged_steps(L.VAL_ACC)

    @classmethod
    def for_draw(cls, tracking_uri: str, parent_run_id: str, ticket: TicketConfig) -> TrialRun:
        return cls(tracking_uri, parent_run_id, trial_key=L.draw_trial_key(ticket), stage=L.STAGE_DRAW,
                   tags={L.TICKET_KEY: ticket.key, L.TWEAK: L.VANILLA}, params=draw_params(ticket),
                   run_name=L.draw_run_name(ticket))

    @classmethod
    def for_spend(cls, tracking_uri: str, parent_run_id: str, spend: SpendConfig, sparsity: float,
                  live_sparsity: float | None = None) -> TrialRun:
        return cls(tracking_uri, parent_run_id, trial_key=L.spend_trial_key(spend), stage=L.STAGE_SPEND,
                   tags={L.TICKET_KEY: spend.ticket.key, L.SPEND_KEY: spend.key, L.TWEAK: spend.tweaks.describe()},
                   params=spend_params(spend, sparsity, live_sparsity), run_name=L.spend_run_name(spend))

    # -------------------------------------------------------------------- plain logging

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_points([(k, v, step or 0) for k, v in metrics.items()])

    def log_points(self, points: Sequence[tuple[str, float, int]]) -> None:
        """(name, value, step) triples in one batch. A value of None is a number that was not
        finite when stored (JSON has no NaN: `ArtifactStore.write_json`) and is logged as NaN."""
        from mlflow.entities import Metric

        now = _now_ms()
        for start in range(0, len(points), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=[Metric(k, math.nan if v is None else float(v), now, int(s))
                                                        for k, v, s in points[start:start + 1000]])

    def logged_steps(self, key: str) -> set[int]:
        """Steps already logged for a metric (only a run an earlier attempt started can have any)."""
        if not self.resumed:
            return set()
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_params(self, params: Mapping[str, str]) -> None:
        """Params known only once the trial's result is in (logging a param again with the value it
        has is allowed, so a trial that runs again may repeat this)."""
        from mlflow.entities import Param

        if params:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def logged_metrics(self) -> set[str]:
        return set(self.client.get_run(self.run_id).data.metrics)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    # -------------------------------------------------------------------- the layout's metrics

    def log_epoch(self, record: Any, hessian_top_eigenvalue: float | None = None) -> None:
        """One epoch's per-epoch metrics, step = epoch: `record` is an `EpochRecord` or its dict
        (`train_loss`, `val_acc`, `test_acc`, `lr`), plus the top Hessian eigenvalue when it was
        measured this epoch. Skipped when an earlier attempt of the trial logged the epoch already."""
        get = record.get if isinstance(record, Mapping) else lambda name: getattr(record, name)
        epoch = int(get("epoch"))
        if epoch in self._logged_epochs:
            return
        metrics = {name: get(name) for name in L.EPOCH_METRICS}
        if hessian_top_eigenvalue is not None:
            metrics[L.HESSIAN] = hessian_top_eigenvalue
        self.log_metrics(metrics, step=epoch)
        self._logged_epochs.add(epoch)

    def log_spend_result(self, result: Mapping[str, Any], device_share: float,
                         analysis: Mapping[str, float] | None = None) -> None:
        """A finished spend's final metrics (`layout.spend_final_metrics`), and with `--analyze`
        the analyses' under their final names, at the last epoch's step; those an earlier attempt
        logged already are left alone. The platform it was computed on goes in the params."""
        self.log_params(L.platform_params(result.get("platform")))
        history = result.get("history") or []
        step = history[-1]["epoch"] if history else 0
        final = {**L.spend_final_metrics(dict(result), device_share),
                 **L.analysis_final_metrics(dict(analysis or {}))}
        logged = self.logged_metrics() if self.resumed else set()
        self.log_metrics({k: v for k, v in final.items() if k not in logged}, step=step)
        records = result.get("init_records")
        if records:  # what the tweaks' init hooks learned (GradInit's scales)
            self.client.log_dict(self.run_id, dict(records), L.INIT_RECORDS)

    def log_analyses(self, analyses: Sequence[Mapping[str, Any]]) -> None:
        """Each analysis of the spent weights (`lth_core.analysis.run.spend_analysis`: its `epoch`,
        None for the final weights) as `analysis/<label>.json`, and their labels in the tag
        `analyses`; a rerun writes them again (the same numbers)."""
        if not analyses:
            return
        labels = [L.analysis_label(a["epoch"]) for a in analyses]
        for label, analysis in zip(labels, analyses):
            self.client.log_dict(self.run_id, dict(analysis), L.analysis_artifact(label))
        self.set_tags({L.ANALYSES: ",".join(labels)})

    def log_draw_summary(self, summary: Mapping[str, Any]) -> None:
        """A finished draw (`lth_core.lottery.draw`'s summary): dense accuracies, per-level vanilla
        LTH and sparsities, nominal and among live weights (step = level), and the wall seconds as
        metrics; its weight counts and platform as params; once, also when the trial ran again."""
        if self.resumed and L.LEVEL_SPARSITY in self.logged_metrics():
            return
        weights = summary.get("weights")
        self.log_params({**({L.PRUNABLE_WEIGHTS: weights["prunable"], L.LIVE_WEIGHTS: weights["live"]}
                            if weights else {}), **L.platform_params(summary.get("platform"))})
        dense, levels = summary["dense"], summary["levels"]
        points = [(L.LEVEL_SPARSITY, level["sparsity"], level["level"]) for level in levels]
        points += [(L.LEVEL_LIVE_SPARSITY, level["live_sparsity"], level["level"]) for level in levels
                   if "live_sparsity" in level]
        if dense is not None:  # a draw at initialisation trains nothing: masks only
            points += [(L.DENSE_TEST_ACC, dense["test_acc"], 0), (L.DENSE_BEST_VAL_ACC, dense["best_val_acc"], 0)]
            for level in levels:
                points += [(L.VANILLA_TEST_ACC, level["test_acc"], level["level"]),
                           (L.VANILLA_BEST_VAL_ACC, level["best_val_acc"], level["level"])]
            points.append((L.WALL_SECONDS, dense["wall_seconds"] + sum(lv["wall_seconds"] for lv in levels), 0))
        self.log_points(points)
