"""Security of a sweep (issue 13): the in-process Ray listens on 127.0.0.1 only and sends no usage
stats, and no password of a tracking, storage or store URI reaches the plan, the MLflow tags or
`sweep_config.json`. Nothing here starts Ray or MLflow: `ray.init` and the MLflow client are stand-ins.
(The local store's symlink checks are in test_store.py, the compose stack's auth in
test_deployment_static.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest

from sweeps import full_grid, optuna_search, runner
from sweeps.config import SweepConfig
from tracking import layout as L
from tracking import runs

PASSWORDS = ("s3cretKEY", "pgPASSWORD", "optunaPASS", "resultsPASS")
WITH_PASSWORDS = {
    "store": "s3://AKIAKEY:s3cretKEY@tickets/prefix",
    "tracking_uri": "postgresql://mlflow:pgPASSWORD@db:5432/mlflow",
    "optuna_storage": "postgresql+psycopg2://optuna:optunaPASS@db/optuna?sslmode=require",
    "results_dir": "s3://AKIAKEY:resultsPASS@tickets/ray_results",
}
FLAGS = ["--store", WITH_PASSWORDS["store"], "--tracking-uri", WITH_PASSWORDS["tracking_uri"],
         "--optuna-storage", WITH_PASSWORDS["optuna_storage"], "--results-dir", WITH_PASSWORDS["results_dir"]]


def no_password(text: str) -> bool:
    return not [p for p in PASSWORDS if p in text]


# ------------------------------------------------------------------------------ local Ray


@pytest.fixture
def fake_ray(monkeypatch):
    """`ray.init` recorded instead of run, with the node address Ray would derive during the call."""
    import ray
    from ray._private import services, worker

    seen = {}

    def init(**kwargs):
        seen.update(kwargs, usage_stats=os.environ.get("RAY_USAGE_STATS_ENABLED"))
        if "_node_ip_address" in kwargs:  # what ray.init makes of it (Linux: the outward address unless told)
            seen["node_ip"] = services.resolve_ip_for_localhost(kwargs["_node_ip_address"])
        if "fail" in seen:
            raise ConnectionError(seen["fail"])

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(worker, "_global_node", None)  # the test session's Ray, if any, is not this node
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    return seen


def test_local_ray_listens_on_127_0_0_1_only_without_usage_stats(fake_ray):
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    runner.init_ray(SweepConfig())
    assert fake_ray["address"] == "local"
    assert fake_ray["node_ip"] == "127.0.0.1"  # GCS, raylet, workers, agents bind the node address
    assert fake_ray["include_dashboard"] is False and fake_ray["dashboard_host"] == "127.0.0.1"
    assert fake_ray["usage_stats"] == "0"
    assert ray_constants.ENABLE_RAY_CLUSTER == cluster_mode  # Ray's own flag is back once started


def test_usage_stats_the_user_turned_on_stay_on(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    runner.init_ray(SweepConfig())
    assert fake_ray["usage_stats"] == "1"


def test_joining_a_cluster_changes_nothing_and_hides_a_password(fake_ray):
    address = "ray://admin:pgPASSWORD@head:10001"
    fake_ray["fail"] = f"could not reach {address}"
    with pytest.raises(runner.SweepError, match=r"ray://admin:\*\*\*@head:10001") as raised:
        runner.init_ray(SweepConfig(ray_address=address))
    assert no_password(str(raised.value))
    assert fake_ray["address"] == address and "_node_ip_address" not in fake_ray


# ------------------------------------------------------------------------------ passwords


def test_the_plans_show_no_password():
    sweep = SweepConfig(**WITH_PASSWORDS)
    for text in (runner.plan_text(sweep, 4, L.KIND_GRID), optuna_search.plan(sweep),
                 runs.ui_hint(sweep.tracking_uri, "1"), runs.ui_hint("https://me:pgPASSWORD@mlflow.example", "1")):
        assert no_password(text), text
    plan = optuna_search.plan(sweep)
    for shown in ("s3://AKIAKEY:***@tickets/prefix", "postgresql://mlflow:***@db:5432/mlflow",
                  "postgresql+psycopg2://optuna:***@db/optuna?sslmode=require", "s3://AKIAKEY:***@tickets/ray_results"):
        assert shown in plan  # still says where things go


@pytest.mark.parametrize("main", [full_grid.main, optuna_search.main], ids=["grid", "optuna"])
def test_a_dry_run_prints_no_password(main, monkeypatch):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["--preset", "smoke", "--dry-run", *FLAGS]) == 0
    assert "postgresql://mlflow:***@db:5432/mlflow" in err.getvalue()
    assert no_password(err.getvalue()), err.getvalue()


class RecordingClient:
    """The calls `start_parent_run` makes of an MlflowClient, on a fresh experiment."""

    def __init__(self):
        self.tags, self.artifacts = {}, {}

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, artifact_location=None):
        return "1"

    def search_runs(self, *args, **kwargs):
        from mlflow.store.entities.paged_list import PagedList

        return PagedList([], token=None)

    def create_run(self, experiment_id, tags=None, run_name=None):
        self.tags.update(tags or {})
        return SimpleNamespace(info=SimpleNamespace(run_id="parent"))

    def get_run(self, run_id):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id="1"))

    def log_dict(self, run_id, dictionary, artifact_file):
        self.artifacts[artifact_file] = json.dumps(dictionary, default=str)  # as MLflow writes it


def test_the_parent_run_tags_and_sweep_config_hold_no_password(monkeypatch):
    """What `sweep_session` hands MLflow: the tags (an Optuna storage tag given unmasked on purpose)
    and the dict `sweep_config.json` is written from."""
    client = RecordingClient()
    monkeypatch.setattr(runs, "_client", lambda uri: client)
    for name in ("check_reachable", "init_ray", "check_resources", "finish_parent_run"):
        monkeypatch.setattr(runner, name, lambda *args, **kwargs: None)
    sweep = SweepConfig(**WITH_PASSWORDS)
    with runner.sweep_session(sweep, "smoke", L.KIND_OPTUNA, {L.OPTUNA_STORAGE: sweep.optuna_storage}) as parent:
        assert parent == "parent"
    config = client.artifacts[L.SWEEP_CONFIG_ARTIFACT]
    assert no_password(config) and no_password(json.dumps(client.tags))
    logged = json.loads(config)
    assert logged["tracking_uri"] == "postgresql://mlflow:***@db:5432/mlflow"
    assert logged["store"] == "s3://AKIAKEY:***@tickets/prefix" and logged["name"] == sweep.name
    assert client.tags[L.OPTUNA_STORAGE] == "postgresql+psycopg2://optuna:***@db/optuna?sslmode=require"
