"""MLflow -> pandas: read one sweep's runs (layout in docs/tracking.md) into tidy frames.

Everything that talks to MLflow or Optuna lives here, so `analysis` stays pure pandas.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Columns that lead the trials table; params and metrics follow in name order.
ID_COLUMNS = ["run_id", "run_name", "parent_run_id", "status", "stage", "tweak", "ticket_key",
              "spend_key", "start_time", "end_time", "final"]
DRAW_LEVEL_METRICS = ["vanilla_test_acc", "vanilla_best_val_acc", "level_sparsity"]
# The paper's analyses, logged by sweeps run with --analyze / --hessian-every N.
HESSIAN_METRIC = "hessian_top_eigenvalue"
ACT_SPARSITY_METRIC = "act_sparsity"  # overall; act_sparsity_<stage> per stage
HESSIAN_HISTORY_COLUMNS = ["run_id", "epoch", "hessian_top_eigenvalue"]
HEALTH_TIMEOUT_S = 3.0


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


def empty_hessian_history() -> pd.DataFrame:
    return pd.DataFrame({"run_id": pd.Series(dtype=object), "epoch": pd.Series(dtype="int64"),
                         HESSIAN_METRIC: pd.Series(dtype="float64")})


@dataclass
class Sweep:
    """One experiment's runs. `trials` has a row per child run; `draw_levels` a row per draw
    run and level (the draw logs vanilla LTH per level as a step series); `hessian_history` a
    row per spend run and epoch at which `--hessian-every N` measured the top eigenvalue."""

    experiment: str
    tracking_uri: str
    trials: pd.DataFrame
    draw_levels: pd.DataFrame
    parent: dict | None = None
    n_parents: int = 0
    optuna: list[OptunaLevel] | None = None
    optuna_note: str | None = None
    hessian_history: pd.DataFrame = field(default_factory=empty_hessian_history)


def redact(uri: str) -> str:
    """The URI without its password: it is printed and ends up in an HTML artifact."""
    password = urlparse(uri).password
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


def sqlite_path(url: str) -> str:
    """The file behind a `sqlite:///` URL ('' for anything else or an in-memory database)."""
    path = url[len("sqlite:///"):].split("?")[0] if url.startswith("sqlite:///") else ""
    return "" if path == ":memory:" else path


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_reachable(uri: str) -> None:
    """Fail fast and clearly: mlflow retries an HTTP server for minutes, and silently creates a
    new empty store for a mistyped sqlite path."""
    how = "pass --tracking-uri or set MLFLOW_TRACKING_URI"
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # the server answered; authentication and the like are mlflow's to report
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReportError(f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); "
                              f"start it (mlflow server ...) or {how}") from None
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path and not Path(path).is_file():
            raise ReportError(f"no MLflow store at {Path(path).resolve()} (tracking URI {redact(uri)}); {how}")
    elif scheme in ("", "file"):
        path = urlparse(uri).path if scheme else uri
        if not Path(path).is_dir():
            raise ReportError(f"no MLflow file store at {path} (tracking URI {uri}); {how}")


def connect(uri: str):
    """A client for `uri`, after the reachability check."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        raise ReportError(f"cannot read the MLflow store at {redact(uri)}: {exc}") from None
    return client


def load_sweep(client, experiment: str, with_optuna: bool = True) -> Sweep:
    """All runs of `experiment` as a Sweep; raises ReportError for an unknown experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        listed = ", ".join(repr(n) for n in names) if names else "none"
        raise ReportError(f"no experiment named {experiment!r} at {redact(client.tracking_uri)}; "
                          f"experiments there: {listed}")
    runs = _all_runs(client, exp.experiment_id)
    parents = sorted((r for r in runs if r.data.tags.get("stage") == "sweep"),
                     key=lambda r: r.info.start_time or 0)
    children = [r for r in runs if r.data.tags.get("stage") != "sweep"]
    trials = trials_frame(client, children)
    hessian = hessian_values(client, [r for r in children if r.data.tags.get("stage") == "spend"])
    sweep = Sweep(
        experiment=experiment,
        tracking_uri=redact(client.tracking_uri),
        trials=with_final_hessian(trials, hessian),
        draw_levels=draw_levels_frame(client, [r for r in children if r.data.tags.get("stage") == "draw"]),
        n_parents=len(parents),
        hessian_history=hessian_history(hessian),
    )
    if parents:
        latest = parents[-1]
        sweep.parent = {"run_id": latest.info.run_id, "status": latest.info.status,
                        "start_time": pd.to_datetime(latest.info.start_time, unit="ms", utc=True),
                        "tags": {k: v for k, v in latest.data.tags.items() if not k.startswith("mlflow.")}}
        if with_optuna:
            sweep.optuna, sweep.optuna_note = optuna_from_tags(sweep.parent["tags"])
    else:
        sweep.optuna_note = "No sweep parent run (tag stage=sweep), so no Optuna studies are known."
    return sweep


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def final_test_acc(client, run_id: str) -> float | None:
    """The spend run's final test_acc: the value logged last. MLflow's own "latest" value is
    the one with the highest step, i.e. the last epoch's, not the step-less final value."""
    history = client.get_metric_history(run_id, "test_acc")
    if not history:
        return None
    return max(enumerate(history), key=lambda im: (im[1].timestamp, im[0]))[1].value


def trials_frame(client, runs: list) -> pd.DataFrame:
    """A row per run: tags, params (numbers where they parse), final metrics."""
    rows, param_names, metric_names = [], set(), set()
    for run in runs:
        tags, metrics = run.data.tags, dict(run.data.metrics)
        stage = tags.get("stage")
        # A spend run is final once its final-only metric is there; until then its latest
        # test_acc is some epoch's, which must not pass for the result.
        final = run.info.status == "FINISHED" and (stage != "spend" or "best_val_acc" in metrics)
        if stage == "spend":
            metrics["test_acc"] = final_test_acc(client, run.info.run_id) if final else None
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "parent_run_id": tags.get("mlflow.parentRunId"),
            "status": run.info.status,
            "stage": stage,
            "tweak": tags.get("tweak"),
            "ticket_key": tags.get("ticket_key"),
            "spend_key": tags.get("spend_key"),
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True) if run.info.end_time else pd.NaT,
            "final": final,
        }
        for name, value in run.data.params.items():
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


def hessian_values(client, spends: list) -> pd.DataFrame:
    """Every logged top Hessian eigenvalue of the spend runs that have one: a row per value with
    its epoch (step), timestamp and whether it was logged during training (`--hessian-every N`,
    before the run's final metrics) or with the final metrics (`--analyze`, at the last epoch's
    step). Only runs with the metric cost a history request (two: the eigenvalues and, for the
    cut-off, best_val_acc)."""
    rows = []
    for run in spends:
        if HESSIAN_METRIC not in run.data.metrics:
            continue
        run_id = run.info.run_id
        history = client.get_metric_history(run_id, HESSIAN_METRIC)
        finals = client.get_metric_history(run_id, "best_val_acc") if "best_val_acc" in run.data.metrics else []
        cutoff = min((m.timestamp for m in finals), default=None)
        for order, m in enumerate(history):
            rows.append({"run_id": run_id, "epoch": m.step, HESSIAN_METRIC: m.value, "timestamp": m.timestamp,
                         "order": order, "during_training": cutoff is None or m.timestamp < cutoff})
    columns = ["run_id", "epoch", HESSIAN_METRIC, "timestamp", "order", "during_training"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"run_id": object, "epoch": "int64", HESSIAN_METRIC: "float64", "timestamp": "int64",
                         "order": "int64", "during_training": bool})


def with_final_hessian(trials: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """`hessian_top_eigenvalue` as the value logged last (by timestamp): the final `--analyze` value
    when there is one, else the last epoch `--hessian-every N` measured. MLflow's "latest" value
    is the highest step's, which ties at the last epoch when both were logged."""
    if values.empty or HESSIAN_METRIC not in trials.columns:
        return trials
    last = values.sort_values(["timestamp", "order"]).drop_duplicates("run_id", keep="last")
    final = trials["run_id"].map(last.set_index("run_id")[HESSIAN_METRIC])
    trials = trials.copy()
    trials[HESSIAN_METRIC] = final.where(final.notna(), trials[HESSIAN_METRIC]).astype("float64")
    return trials


def hessian_history(values: pd.DataFrame) -> pd.DataFrame:
    """The eigenvalue per epoch as measured during training (Figure A12): a row per run and epoch
    (the latest value when an epoch was logged twice, e.g. by a restarted trial)."""
    during = values[values["during_training"]].sort_values(["timestamp", "order"])
    if during.empty:
        return empty_hessian_history()
    during = during.drop_duplicates(["run_id", "epoch"], keep="last").sort_values(["run_id", "epoch"])
    return during[HESSIAN_HISTORY_COLUMNS].reset_index(drop=True)


def draw_levels_frame(client, draws: list) -> pd.DataFrame:
    """A row per (draw run, level) from the draw's per-level step series."""
    rows: dict[tuple, dict] = {}
    for run in draws:
        for metric in DRAW_LEVEL_METRICS:
            for m in client.get_metric_history(run.info.run_id, metric):
                row = rows.setdefault((run.info.run_id, m.step), {
                    "run_id": run.info.run_id, "ticket_key": run.data.tags.get("ticket_key"),
                    "level": m.step})
                row[metric] = m.value
    columns = ["run_id", "ticket_key", "level", *DRAW_LEVEL_METRICS]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    frame["level"] = frame["level"].astype("int64")
    for metric in DRAW_LEVEL_METRICS:
        frame[metric] = frame[metric].astype("float64")
    return frame.sort_values(["run_id", "level"]).reset_index(drop=True)


def optuna_from_tags(tags: dict) -> tuple[list[OptunaLevel] | None, str | None]:
    """The parent's `optuna_storage` / `optuna_study_prefix` tags -> per-level study summaries."""
    storage, prefix = tags.get("optuna_storage"), tags.get("optuna_study_prefix")
    if not storage or not prefix:
        return None, (f"This is a {tags.get('kind', 'grid')} sweep: the parent run names no Optuna "
                      "studies (tags optuna_storage, optuna_study_prefix).")
    path = sqlite_path(storage)
    if path and not Path(path).is_file():  # optuna would create an empty store there
        return None, f"The Optuna storage {redact(storage)} named by the parent run does not exist (from this folder)."
    prefixes = tags.get("optuna_study_prefixes", prefix).split(",")  # one prefix per ticket seed
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


def log_report(client, run_id: str, paths: list[Path], artifact_path: str = "report") -> None:
    """Attach the report files to the sweep's parent run, so they show in the MLflow UI."""
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
