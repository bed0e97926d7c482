"""Reading the MLflow layout (docs/tracking.md): an experiment's parent and child runs, their
metric histories, and the final results under the report's column names.

The dashboards talk to MLflow through this module only; what they get back are plain
`RunRecord`s and `MetricPoint`s, no MLflow objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracking import layout as L
from tracking.probe import TrackingError, check_reachable, redact

RESULT_ONLY_COLUMNS = frozenset({L.TEST_ACC})
"""Report columns that hold a spend's final value only: the per-epoch metric of the same name is
some epoch's value and never passes for the result (an unfinished run shows none)."""


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp: int


@dataclass
class RunRecord:
    """One run as the report needs it; `metrics` are MLflow's latest values (highest step)."""

    run_id: str
    run_name: str
    status: str
    start_time: int | None  # ms since the epoch
    end_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def stage(self) -> str | None:
        return self.tags.get(L.STAGE)

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(L.PARENT_RUN_ID)

    @property
    def user_tags(self) -> dict[str, str]:
        """The tags without MLflow's own (`mlflow.*`)."""
        return {k: v for k, v in self.tags.items() if not k.startswith(L.MLFLOW_TAG_PREFIX)}


@dataclass
class ExperimentRuns:
    """An experiment's runs: the sweep's parent run(s), oldest first, and every other run."""

    experiment: str
    parents: list[RunRecord]
    children: list[RunRecord]

    @property
    def draws(self) -> list[RunRecord]:
        return [r for r in self.children if r.stage == L.STAGE_DRAW]

    @property
    def spends(self) -> list[RunRecord]:
        return [r for r in self.children if r.stage == L.STAGE_SPEND]


def is_complete(run: RunRecord) -> bool:
    """FINISHED, and for a spend run with its final metrics logged (a spend stopped by a
    scheduler or still running has per-epoch values only)."""
    return run.status == "FINISHED" and (run.stage != L.STAGE_SPEND or L.SPEND_DONE_METRIC in run.metrics)


def result_metrics(run: RunRecord) -> dict[str, float]:
    """A run's metrics under the report's column names. A spend run's final metrics lose their
    prefix (`final_test_acc` -> `test_acc`) and win over a per-epoch metric of the same column:
    `hessian_top_eigenvalue` is the `--analyze` value, else the last epoch `--hessian-every`
    measured. Other per-epoch metrics give their last epoch's value, except the result-only
    columns (`RESULT_ONLY_COLUMNS`). Draw runs have no final metrics: their names are kept."""
    if run.stage != L.STAGE_SPEND:
        return dict(run.metrics)
    out = {k: v for k, v in run.metrics.items() if not L.is_final(k) and k not in RESULT_ONLY_COLUMNS}
    out.update({L.result_column(k): v for k, v in run.metrics.items() if L.is_final(k)})
    return out


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, run_name=run.info.run_name, status=run.info.status,
                     start_time=run.info.start_time, end_time=run.info.end_time, tags=dict(run.data.tags),
                     params=dict(run.data.params), metrics=dict(run.data.metrics))


class TrackingReader:
    """Read access to one tracking URI, checked on opening (`probe.check_reachable` with an
    existing store, then one request); raises TrackingError with what to do."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        check_reachable(tracking_uri, existing_store=True)
        self.tracking_uri = tracking_uri
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - MLflow's own errors, a file that is no database, a missing driver
            why = " ".join(str(exc).split())[:300].replace(tracking_uri, self.shown_uri) or type(exc).__name__
            raise TrackingError(f"cannot read the MLflow store at {self.shown_uri} ({why}); pass --tracking-uri "
                                "with an MLflow store: sqlite:///mlflow.db, a server (http://...) or a database "
                                "URL whose driver is installed") from None

    @property
    def shown_uri(self) -> str:
        """The tracking URI fit to print (password masked)."""
        return redact(self.tracking_uri)

    def experiment_names(self) -> list[str]:
        names, token = [], None
        while True:
            page = self.client.search_experiments(max_results=1000, page_token=token)
            names.extend(e.name for e in page)
            token = page.token
            if not token:
                return sorted(names)

    def experiment_runs(self, experiment: str) -> ExperimentRuns:
        """Every run of an active experiment, split into parent runs (stage=sweep) and the rest."""
        from tracking.runs import search_all

        exp = self.client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            names = self.experiment_names()
            listed = ", ".join(repr(n) for n in names) if names else "none"
            raise TrackingError(f"no experiment named {experiment!r} at {self.shown_uri}; experiments there: {listed}")
        runs = [_record(r) for r in search_all(self.client, [exp.experiment_id])]
        parents = sorted((r for r in runs if r.stage == L.STAGE_SWEEP), key=lambda r: r.start_time or 0)
        return ExperimentRuns(experiment=experiment, parents=parents,
                              children=[r for r in runs if r.stage != L.STAGE_SWEEP])

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every value logged for a metric, in logging order."""
        return [MetricPoint(step=m.step, value=m.value, timestamp=m.timestamp)
                for m in self.client.get_metric_history(run_id, key)]

    def analyses(self, run: RunRecord) -> dict[str, dict]:
        """A spend run's analysis documents by label (`final`, `epoch_<K>`), as its tag `analyses`
        names them; empty for a run without any. A document that cannot be read is left out."""
        import json
        import tempfile

        from mlflow.exceptions import MlflowException

        out = {}
        for label in filter(None, run.tags.get(L.ANALYSES, "").split(",")):
            with tempfile.TemporaryDirectory() as folder:
                try:
                    local = self.client.download_artifacts(run.run_id, L.analysis_artifact(label), folder)
                    out[label] = json.loads(Path(local).read_text())
                except (MlflowException, OSError, ValueError):
                    continue
        return out

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str = L.REPORT_ARTIFACT_PATH) -> None:
        """Attach files (the report) to a run, so that they show in the MLflow UI."""
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
