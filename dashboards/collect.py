"""MLflow -> pandas: read one sweep's runs (layout in docs/tracking.md) into tidy frames.

MLflow is read through `tracking.reader` only (which owns the layout's names); Optuna studies
are read here. `analysis` stays pure pandas.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tracking import layout
from tracking.probe import TrackingError, redact, sqlite_path
from tracking.reader import RunRecord, TrackingReader, is_complete, result_metrics

DEFAULT_TRACKING_URI = layout.DEFAULT_TRACKING_URI
# Columns that lead the trials table; params and metrics follow in name order.
ID_COLUMNS = ["run_id", "run_name", "parent_run_id", "status", "stage", "tweak", "ticket_key",
              "spend_key", "start_time", "end_time", "final"]
DRAW_LEVEL_METRICS = list(layout.DRAW_LEVEL_METRICS)
# The paper's analyses, logged by sweeps run with --analyze / --hessian-every N (report columns).
HESSIAN_METRIC = layout.HESSIAN
ACT_SPARSITY_METRIC = layout.ACT_SPARSITY  # overall; act_sparsity_<stage> per stage
HESSIAN_HISTORY_COLUMNS = ["run_id", "epoch", HESSIAN_METRIC]
# A row per spend run and analysed set of weights (--analyze, --analyze-epochs): the landscapes' arrays.
LANDSCAPE_COLUMNS = ["run_id", "weights", "epoch", "steps", "surface_2d", "input_steps", "input_random_1d",
                     "input_gradient_sign_1d", "input_surface_2d"]


class ReportError(RuntimeError):
    """A problem the user must fix before any work starts (bad URI, unknown experiment)."""


@dataclass
class OptunaLevel:
    """One `<prefix>-level<k>` study, reduced to what the report shows."""

    level: int
    study: str
    n_trials: int
    n_complete: int
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    importances: dict | None = None
    note: str | None = None


def empty_landscapes() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="Int64" if c == "epoch" else object) for c in LANDSCAPE_COLUMNS})


def empty_hessian_history() -> pd.DataFrame:
    return pd.DataFrame({"run_id": pd.Series(dtype=object), "epoch": pd.Series(dtype="int64"),
                         HESSIAN_METRIC: pd.Series(dtype="float64")})


@dataclass
class Sweep:
    """One experiment's runs. `trials` has a row per child run; `draw_levels` a row per draw
    run and level (the draw logs vanilla LTH per level as a step series); `hessian_history` a
    row per spend run and epoch at which `--hessian-every N` measured the top eigenvalue;
    `landscapes` a row per spend run and analysed set of weights (`weights`: `final` or
    `epoch_<K>`) with the landscapes' arrays (numpy)."""

    experiment: str
    tracking_uri: str
    trials: pd.DataFrame
    draw_levels: pd.DataFrame
    parent: dict | None = None
    n_parents: int = 0
    optuna: list[OptunaLevel] | None = None
    optuna_note: str | None = None
    hessian_history: pd.DataFrame = field(default_factory=empty_hessian_history)
    landscapes: pd.DataFrame = field(default_factory=empty_landscapes)


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(uri: str) -> TrackingReader:
    """A reader for `uri`, after the reachability check (`tracking.probe.check_reachable`)."""
    try:
        return TrackingReader(uri)
    except TrackingError as exc:
        raise ReportError(str(exc)) from None


def load_sweep(reader: TrackingReader, experiment: str, with_optuna: bool = True) -> Sweep:
    """All runs of `experiment` as a Sweep; raises ReportError for an unknown experiment."""
    try:
        runs = reader.experiment_runs(experiment)
    except TrackingError as exc:
        raise ReportError(str(exc)) from None
    sweep = Sweep(
        experiment=experiment,
        tracking_uri=reader.shown_uri,
        trials=trials_frame(runs.children),
        draw_levels=draw_levels_frame(reader, runs.draws),
        n_parents=len(runs.parents),
        hessian_history=hessian_history(reader, runs.spends),
        landscapes=landscapes(reader, runs.spends),
    )
    if runs.parents:
        latest = runs.parents[-1]
        sweep.parent = {"run_id": latest.run_id, "status": latest.status,
                        "start_time": pd.to_datetime(latest.start_time, unit="ms", utc=True),
                        "tags": latest.user_tags}
        if with_optuna:
            sweep.optuna, sweep.optuna_note = optuna_from_tags(sweep.parent["tags"])
    else:
        sweep.optuna_note = (f"No sweep parent run (tag {layout.STAGE}={layout.STAGE_SWEEP}), "
                             "so no Optuna studies are known.")
    return sweep


def trials_frame(runs: list[RunRecord]) -> pd.DataFrame:
    """A row per run: tags, params (numbers where they parse), and the metrics under the report's
    column names (`tracking.reader.result_metrics`): a spend run's final metrics without their
    `final_` prefix (`final_test_acc` -> `test_acc`, NaN until the run is final)."""
    rows, param_names, metric_names = [], set(), set()
    for run in runs:
        tags = run.tags
        row = {
            "run_id": run.run_id,
            "run_name": run.run_name,
            "parent_run_id": run.parent_run_id,
            "status": run.status,
            "stage": run.stage,
            "tweak": tags.get(layout.TWEAK),
            "ticket_key": tags.get(layout.TICKET_KEY),
            "spend_key": tags.get(layout.SPEND_KEY),
            "start_time": pd.to_datetime(run.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.end_time, unit="ms", utc=True) if run.end_time else pd.NaT,
            "final": is_complete(run),
        }
        metrics = result_metrics(run)
        if run.stage == layout.STAGE_SPEND and not row["final"]:
            metrics.setdefault(layout.TEST_ACC, None)  # the column exists, empty until the result is in
        for name, value in run.params.items():
            column = name if name not in ID_COLUMNS else f"param.{name}"
            row[column] = value
            param_names.add(column)
        for name, value in metrics.items():
            column = name if name not in row else f"metric.{name}"
            row[column] = value
            metric_names.add(column)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ID_COLUMNS)
    param_names, metric_names = sorted(param_names), sorted(metric_names - param_names)
    for name in param_names:
        frame[name] = convert_param(frame[name])
    for name in metric_names:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame["start_time"] = pd.to_datetime(frame["start_time"], utc=True)
    frame["end_time"] = pd.to_datetime(frame["end_time"], utc=True)
    frame["final"] = frame["final"].astype(bool)
    return frame[ID_COLUMNS + param_names + metric_names].reset_index(drop=True)


_INT = re.compile(r"^[+-]?\d+$")


def convert_param(values: pd.Series) -> pd.Series:
    """MLflow stores params as strings: give integers, floats and true/false their real type,
    leave any column with a non-number in it as text."""
    present = values.dropna().astype(str)
    if present.empty:
        return values.astype(object)
    if present.str.lower().isin(["true", "false"]).all():
        return values.map(lambda v: None if pd.isna(v) else str(v).lower() == "true").astype("boolean")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return values.astype(object)
    if present.str.match(_INT).all():
        return pd.to_numeric(values, errors="coerce").astype("Int64")
    return pd.to_numeric(values, errors="coerce").astype("float64")


def hessian_history(reader: TrackingReader, spends: list[RunRecord]) -> pd.DataFrame:
    """The top Hessian eigenvalue per epoch as measured during training (`--hessian-every N`,
    Figure A12): a row per run and epoch (the latest value when an epoch was logged twice, e.g. by
    a restarted trial). The final `--analyze` value has its own name and is not part of it. Only
    runs with the metric cost a history request."""
    rows = []
    for run in spends:
        if layout.HESSIAN not in run.metrics:
            continue
        for order, m in enumerate(reader.metric_history(run.run_id, layout.HESSIAN)):
            rows.append({"run_id": run.run_id, "epoch": m.step, HESSIAN_METRIC: m.value, "timestamp": m.timestamp,
                         "order": order})
    if not rows:
        return empty_hessian_history()
    values = pd.DataFrame(rows).sort_values(["timestamp", "order"])
    values = values.drop_duplicates(["run_id", "epoch"], keep="last").sort_values(["run_id", "epoch"])
    values = values.astype({"run_id": object, "epoch": "int64", HESSIAN_METRIC: "float64"})
    return values[HESSIAN_HISTORY_COLUMNS].reset_index(drop=True)


def landscapes(reader: TrackingReader, spends: list[RunRecord]) -> pd.DataFrame:
    """The landscapes' arrays of each analysed set of weights of each finished spend run (see
    `Sweep`); only runs whose tag names analyses cost artifact requests."""
    rows = []
    for run in spends:
        if not is_complete(run):
            continue
        for label, doc in reader.analyses(run).items():
            weights, inputs = doc.get("landscape") or {}, doc.get("input_landscape") or {}
            array = lambda values: None if values is None else np.asarray(values, dtype=float)  # noqa: E731
            rows.append({"run_id": run.run_id, "weights": label, "epoch": layout.analysis_epoch(label),
                         "steps": array(weights.get("steps")), "surface_2d": array(weights.get("surface_2d")),
                         "input_steps": array(inputs.get("steps")), "input_random_1d": array(inputs.get("random_1d")),
                         "input_gradient_sign_1d": array(inputs.get("gradient_sign_1d")),
                         "input_surface_2d": array(inputs.get("surface_2d"))})
    if not rows:
        return empty_landscapes()
    frame = pd.DataFrame(rows, columns=LANDSCAPE_COLUMNS)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame


def draw_levels_frame(reader: TrackingReader, draws: list[RunRecord]) -> pd.DataFrame:
    """A row per (draw run, level) from the draw's per-level step series."""
    rows: dict[tuple, dict] = {}
    for run in draws:
        for metric in DRAW_LEVEL_METRICS:
            for m in reader.metric_history(run.run_id, metric):
                row = rows.setdefault((run.run_id, m.step), {
                    "run_id": run.run_id, "ticket_key": run.tags.get(layout.TICKET_KEY), "level": m.step})
                row[metric] = m.value
    columns = ["run_id", "ticket_key", "level", *DRAW_LEVEL_METRICS]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    frame["level"] = frame["level"].astype("int64")
    for metric in DRAW_LEVEL_METRICS:
        frame[metric] = frame[metric].astype("float64")
    return frame.sort_values(["run_id", "level"]).reset_index(drop=True)


def optuna_from_tags(tags: dict) -> tuple[list[OptunaLevel] | None, str | None]:
    """The parent's `optuna_storage` / `optuna_study_prefix` tags -> per-level study summaries."""
    storage, prefix = tags.get(layout.OPTUNA_STORAGE), tags.get(layout.OPTUNA_STUDY_PREFIX)
    if not storage or not prefix:
        return None, (f"This is a {tags.get(layout.KIND, layout.KIND_GRID)} sweep: the parent run names no Optuna "
                      f"studies (tags {layout.OPTUNA_STORAGE}, {layout.OPTUNA_STUDY_PREFIX}).")
    path = sqlite_path(storage)
    if path and not Path(path).is_file():  # optuna would create an empty store there
        return None, f"The Optuna storage {redact(storage)} named by the parent run does not exist (from this folder)."
    prefixes = tags.get(layout.OPTUNA_STUDY_PREFIXES, prefix).split(",")  # one prefix per ticket seed
    try:
        return [level for p in prefixes for level in load_optuna(storage, p)], None
    except Exception as exc:  # any storage or schema problem becomes a note, not a crash
        return None, f"Could not load the Optuna studies {prefix}-level<k> from {redact(storage)}: {exc}"


def load_optuna(storage: str, prefix: str) -> list[OptunaLevel]:
    """Load every `<prefix>-level<k>` study: best trial and parameter importances."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pattern = re.compile(rf"^{re.escape(prefix)}-level(\d+)$")
    names = {int(m.group(1)): n for n in optuna.get_all_study_names(storage) if (m := pattern.match(n))}
    levels = []
    for level, name in sorted(names.items()):
        study = optuna.load_study(study_name=name, storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        entry = OptunaLevel(level=level, study=name, n_trials=len(study.trials), n_complete=len(complete))
        if not complete:
            entry.note = "no completed trial yet"
        elif len(study.directions) > 1:
            entry.note = f"multi-objective study: {len(study.best_trials)} Pareto-optimal trials"
        else:
            entry.best_value, entry.best_params = study.best_value, dict(study.best_params)
            if len(complete) < 2:
                entry.note = "parameter importances need at least 2 completed trials"
            else:
                try:
                    entry.importances = dict(optuna.importance.get_param_importances(study))
                except (ValueError, RuntimeError) as exc:
                    entry.note = f"parameter importances unavailable: {exc}"
        levels.append(entry)
    return levels


def log_report(reader: TrackingReader, run_id: str, paths: list[Path],
               artifact_path: str = layout.REPORT_ARTIFACT_PATH) -> None:
    """Attach the report files to the sweep's parent run, so they show in the MLflow UI."""
    reader.log_artifacts(run_id, paths, artifact_path)
