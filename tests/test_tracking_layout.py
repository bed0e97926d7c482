"""The `tracking` package: the one health probe, the one `redact`, and the MLflow layout written by
`tracking.runs` and read back by `tracking.reader` (final metrics under their own names) on a
sqlite MLflow store."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_ticket
from lth_core.config import SpendConfig, TweakConfig
from tracking import layout as L
from tracking.probe import (HEALTH_PATH, TrackingError, TrackingUnreachable, check_reachable, probe_server,
                            redact, sqlite_path)
from tracking.reader import TrackingReader, is_complete, result_metrics
from tracking.runs import (TrialRun, artifact_location, finish_parent_run, log_optuna_best, spend_params,
                           start_parent_run, ui_hint)

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------ the probe


@pytest.fixture
def server():
    """Start a local HTTP server whose /health answers `status`; yields a function status -> URI."""
    servers = []

    def start(status: int) -> str:
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(status if self.path == HEALTH_PATH else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_a_healthy_server_passes(server):
    uri = server(200)
    assert probe_server(uri) == (True, "200 on /health")
    check_reachable(uri)
    check_reachable(uri + "/", existing_store=True)


@pytest.mark.parametrize("status", [401, 403])
def test_a_server_behind_authentication_counts_as_reachable(server, status):
    """The probe sends no credentials; MLflow does, and reports when they are wrong."""
    answered, what = probe_server(server(status))
    assert answered and what.startswith(str(status))
    check_reachable(server(status))


@pytest.mark.parametrize("status", [500, 503, 404])
def test_a_server_answering_an_error_fails(server, status):
    uri = server(status)
    answered, what = probe_server(uri)
    assert not answered and what.startswith(f"{status} ")
    with pytest.raises(TrackingUnreachable, match=f"the MLflow tracking server at {uri} answered {status} "):
        check_reachable(uri)


def test_a_closed_port_fails_fast_with_what_to_do():
    uri = closed_port_uri()
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as caught:
        check_reachable(uri)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(f"cannot reach the MLflow tracking server at {uri} (")
    assert "mlflow server" in message and "--tracking-uri" in message and "MLFLOW_TRACKING_URI" in message
    assert isinstance(caught.value, TrackingError)


def test_the_probe_message_masks_the_password():
    uri = closed_port_uri().replace("http://", "http://me:secret@")
    with pytest.raises(TrackingUnreachable) as caught:
        check_reachable(uri)
    assert "secret" not in str(caught.value) and "me:***@127.0.0.1" in str(caught.value)


def test_a_local_store_must_exist_only_for_reading(tmp_path):
    missing = tmp_path / "absent.db"
    check_reachable(f"sqlite:///{missing}")  # a sweep creates it
    with pytest.raises(TrackingUnreachable, match="no MLflow store at"):
        check_reachable(f"sqlite:///{missing}", existing_store=True)
    with pytest.raises(TrackingUnreachable, match="no MLflow file store"):
        check_reachable(str(tmp_path / "mlruns"), existing_store=True)
    check_reachable("sqlite:///:memory:", existing_store=True)
    assert not missing.exists()


def test_redact():
    assert redact("http://me:secret@host:5000") == "http://me:***@host:5000"
    assert redact("postgresql://u:p%40ss@db:5432/optuna?sslmode=require") == (
        "postgresql://u:***@db:5432/optuna?sslmode=require")
    assert redact("mysql://u:pw@h/db?note=a:pw@b") == "mysql://u:***@h/db?note=a:pw@b"  # the userinfo only
    for unchanged in ("sqlite:///mlflow.db", "http://host:5000", "http://user@host", "smoke", ""):
        assert redact(unchanged) == unchanged
    assert "pw" not in redact("http://u:pw@[::1/x")  # unparsable: still masked


def test_sqlite_path():
    assert sqlite_path("sqlite:///rel/m.db") == "rel/m.db"
    assert sqlite_path("sqlite:////abs/m.db?timeout=5") == "/abs/m.db"
    assert sqlite_path("sqlite:///:memory:") == "" and sqlite_path("http://h") == ""


# ------------------------------------------------------------------------------------ the names


def test_final_metrics_have_their_own_names():
    assert L.FINAL_TEST_ACC == "final_test_acc" and L.FINAL_BEST_VAL_ACC == "final_best_val_acc"
    assert not set(L.SPEND_FINAL_METRICS) & {*L.EPOCH_METRICS, L.HESSIAN}
    assert all(L.is_final(m) for m in L.SPEND_FINAL_METRICS)
    assert L.result_column(L.FINAL_TEST_ACC) == L.TEST_ACC
    assert L.result_column(L.final("act_sparsity_layer1")) == "act_sparsity_layer1"
    assert L.final(L.FINAL_HESSIAN) == "final_hessian_top_eigenvalue"
    assert L.experiment_name("smoke") == "smoke" and L.experiment_name("smoke", "optuna") == "smoke-optuna"
    with pytest.raises(ValueError):
        L.experiment_name("smoke", "random")
    assert L.optuna_best_metric(L.OPTUNA_BEST_VAL_ACC, "ticket1") == "best_val_acc_ticket1"
    assert L.optuna_best_metric(L.OPTUNA_BEST_TEST_ACC, "snip-ticket1") == "best_test_acc_snip_ticket1"
    assert L.optuna_best_metric(L.OPTUNA_BEST_VAL_ACC, None) == L.optuna_best_metric(L.OPTUNA_BEST_VAL_ACC, "")


def test_the_package_imports_neither_ray_nor_the_lottery():
    code = ("import sys, tracking.layout, tracking.probe, tracking.runs, tracking.reader; "
            "bad = [m for m in ('ray', 'lth_core.lottery', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_only_the_package_spells_the_layout_internals():
    """mlflow's nesting tag, the health path and the password mask live in tracking/ only."""
    owners = {}
    folders = [p for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name not in ("tracking", "tests") and not p.name.endswith(".egg-info")]
    for path in (f for folder in folders for f in folder.rglob("*.py")):
        relative = path.relative_to(REPO)
        text = path.read_text(encoding="utf-8")
        for needle in ("parentRunId", '"/health"', "def redact", "get_metric_history", "MlflowClient"):
            if needle in text:
                owners.setdefault(needle, []).append(str(relative))
    assert owners == {}


# ------------------------------------------------------------------------------------ writing and reading


PLATFORM = {"cpu": "AMD EPYC", "cpu_flags": "avx avx2", "cpu_capability": "AVX2", "torch": "2.14.1",
            "blas": "mkl 2024.2", "threads": "1"}


def spend_result(best_val: float, test: float, epochs: int) -> dict:
    return {"best_val_acc": best_val, "test_acc": test, "spend_seconds": 12.0, "vanilla_test_acc": 0.5,
            "dense_test_acc": 0.95, "rescale_scales": {}, "platform": PLATFORM, "history": [
                {"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.1 * e, "test_acc": 0.1 * e, "lr": 0.1}
                for e in range(1, epochs + 1)]}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A grid sweep's runs written the way the trainables write them: a draw, a finished spend
    (restarted once, --hessian-every 1 and --analyze), and a spend still running."""
    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root}/mlflow.db"
    ticket = tiny_ticket()
    parent = start_parent_run(uri, "t", "smoke", L.KIND_GRID,
                              config={"name": "t", "optuna_storage": "postgresql://u:pw@db/optuna"})
    draw = TrialRun.for_draw(uri, parent, ticket)
    draw.log_draw_summary({
        "dense": {"test_acc": 0.95, "best_val_acc": 0.96, "wall_seconds": 3.0},
        "weights": {"prunable": 1000, "live": 400}, "platform": {**PLATFORM, "gpu": "NVIDIA H200"},
        "levels": [{"level": lv, "test_acc": 0.9 - 0.1 * lv, "best_val_acc": 0.9, "sparsity": 0.2 * lv,
                    "live_sparsity": 0.1 * lv, "wall_seconds": 1.0} for lv in (1, 2)]})
    draw.finish()

    done = SpendConfig(ticket=ticket, level=2, tweaks=TweakConfig(activation="swish"))
    result = spend_result(best_val=0.8, test=0.77, epochs=2)
    first = TrialRun.for_spend(uri, parent, done, sparsity=0.36, live_sparsity=0.3)
    first.log_epoch(result["history"][0], hessian_top_eigenvalue=5.0)
    # killed here; Ray restarts the trial from its epoch-1 checkpoint
    again = TrialRun.for_spend(uri, parent, done, sparsity=0.36, live_sparsity=0.3)
    for record, hessian in zip(result["history"], (99.0, 6.0)):
        again.log_epoch(record, hessian_top_eigenvalue=hessian)  # epoch 1 is not logged twice
    again.log_spend_result(result, device_share=0.25, analysis={"act_sparsity": 0.4, "act_sparsity_stem": 0.1,
                                                                "hessian_top_eigenvalue": 7.0})
    again.log_spend_result(result, device_share=0.25)  # a second finish logs nothing twice
    again.finish()

    running = SpendConfig(ticket=ticket, level=1)
    still = TrialRun.for_spend(uri, parent, running, sparsity=0.2)
    still.log_epoch(spend_result(0.6, 0.55, 1)["history"][0])
    return {"uri": uri, "root": root, "parent": parent, "first": first, "again": again, "still": still,
            "done": done, "running": running, "ticket": ticket}


def test_a_restarted_trial_logs_into_its_run_once(logged):
    from mlflow.tracking import MlflowClient

    first, again = logged["first"], logged["again"]
    assert not first.resumed and again.resumed and again.run_id == first.run_id
    client = MlflowClient(logged["uri"])
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, key))
               for key in (L.VAL_ACC, L.TEST_ACC, L.HESSIAN, L.FINAL_TEST_ACC, L.FINAL_BEST_VAL_ACC)}
    assert history[L.VAL_ACC] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert history[L.TEST_ACC] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]  # per epoch only
    assert history[L.HESSIAN] == [(1, 5.0), (2, 6.0)]  # the restart's 99 for epoch 1 was not logged
    assert history[L.FINAL_TEST_ACC] == [(2, 0.77)] and history[L.FINAL_BEST_VAL_ACC] == [(2, 0.8)]


def test_final_metrics_are_logged_under_their_own_names(logged):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(logged["uri"]).get_run(logged["again"].run_id)
    metrics, done = run.data.metrics, logged["done"]
    assert metrics[L.TEST_ACC] == pytest.approx(0.2)  # MLflow's latest per-epoch value: the last epoch's
    assert metrics[L.FINAL_TEST_ACC] == 0.77 and metrics[L.FINAL_BEST_VAL_ACC] == 0.8
    assert metrics[L.FINAL_WALL_SECONDS] == 12.0 and metrics[L.FINAL_DEVICE_SECONDS] == 3.0
    assert metrics[L.FINAL_VANILLA_TEST_ACC] == 0.5 and metrics[L.FINAL_DENSE_TEST_ACC] == 0.95
    assert metrics["final_act_sparsity"] == 0.4 and metrics["final_act_sparsity_stem"] == 0.1
    assert metrics[L.FINAL_HESSIAN] == 7.0 and metrics[L.HESSIAN] == 6.0
    assert not {L.BEST_VAL_ACC, L.ACT_SPARSITY} & set(metrics)
    tags = run.data.tags
    assert tags[L.PARENT_RUN_ID] == logged["parent"] and tags[L.STAGE] == L.STAGE_SPEND
    assert tags[L.TRIAL_KEY] == tags[L.SPEND_KEY] == done.key and tags[L.TWEAK] == "swish"
    assert run.info.run_name == "imp t0 L2 36.0% swish seed0"
    assert run.data.params == {**spend_params(done, 0.36, 0.3), **L.platform_params(PLATFORM)}
    assert run.data.params["sparsity"] == "0.360000" and run.data.params["live_sparsity"] == "0.300000"
    assert run.data.params["activation"] == "swish" and run.data.params["platform.cpu_capability"] == "AVX2"


def test_a_draw_logs_both_sparsities_its_weights_and_platform(logged):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(logged["uri"])
    draw = client.search_runs([client.get_run(logged["parent"]).info.experiment_id],
                              filter_string=f"tags.{L.STAGE} = '{L.STAGE_DRAW}'")[0]
    params = draw.data.params
    assert (params["prunable_weights"], params["live_weights"]) == ("1000", "400")
    assert params["platform.gpu"] == "NVIDIA H200" and params["platform.blas"] == "mkl 2024.2"
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(draw.info.run_id, key))
               for key in (L.LEVEL_SPARSITY, L.LEVEL_LIVE_SPARSITY)}
    assert history == {L.LEVEL_SPARSITY: [(1, 0.2), (2, 0.4)], L.LEVEL_LIVE_SPARSITY: [(1, 0.1), (2, 0.2)]}


def test_the_reader_gives_the_final_values_under_the_report_columns(logged):
    reader = TrackingReader(logged["uri"])
    runs = reader.experiment_runs("t")
    assert [p.run_id for p in runs.parents] == [logged["parent"]]
    assert len(runs.draws) == 1 and len(runs.spends) == 2
    by_key = {r.tags[L.SPEND_KEY]: r for r in runs.spends}
    done, running = by_key[logged["done"].key], by_key[logged["running"].key]
    assert is_complete(done) and not is_complete(running)
    values = result_metrics(done)
    assert values[L.TEST_ACC] == 0.77 and values[L.BEST_VAL_ACC] == 0.8  # not the last epoch's 0.2
    assert values[L.HESSIAN] == 7.0 and values["act_sparsity_stem"] == 0.1  # the --analyze value wins
    assert values[L.DEVICE_SECONDS] == 3.0 and values[L.VAL_ACC] == pytest.approx(0.2)
    assert not any(L.is_final(k) for k in values)
    unfinished = result_metrics(running)
    assert L.TEST_ACC not in unfinished and unfinished[L.VAL_ACC] == pytest.approx(0.1)
    assert [(p.step, p.value) for p in reader.metric_history(done.run_id, L.HESSIAN)] == [(1, 5.0), (2, 6.0)]
    (draw,) = runs.draws
    assert result_metrics(draw)[L.DENSE_TEST_ACC] == 0.95 and is_complete(draw)
    assert [(p.step, p.value) for p in reader.metric_history(draw.run_id, L.VANILLA_TEST_ACC)] == [
        (1, pytest.approx(0.8)), (2, pytest.approx(0.7))]
    assert draw.params["levels"] == "2" and draw.run_name.startswith("draw imp resnet18")


def test_the_dashboards_read_the_final_metrics(logged):
    from dashboards import collect

    sweep = collect.load_sweep(collect.connect(logged["uri"]), "t")
    spends = sweep.trials[sweep.trials["stage"] == L.STAGE_SPEND].set_index("spend_key")
    done, running = spends.loc[logged["done"].key], spends.loc[logged["running"].key]
    assert done["test_acc"] == 0.77 and done["best_val_acc"] == 0.8 and done["final"]
    assert done["hessian_top_eigenvalue"] == 7.0 and done["act_sparsity"] == 0.4
    assert pd_isna(running["test_acc"]) and not running["final"]
    assert not any(c.startswith(L.FINAL_PREFIX) for c in sweep.trials.columns)
    history = sweep.hessian_history
    assert history[["epoch", "hessian_top_eigenvalue"]].values.tolist() == [[1, 5.0], [2, 6.0]]
    assert sweep.draw_levels["level"].tolist() == [1, 2]


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_the_parent_run_is_reused_and_closes_its_children(logged):
    from mlflow.tracking import MlflowClient

    uri, parent = logged["uri"], logged["parent"]
    assert start_parent_run(uri, "t", "smoke", L.KIND_GRID, {"extra": "x"}) == parent  # a rerun: same run
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.run_name == L.PARENT_RUN_NAME and run.data.tags["extra"] == "x"
    assert {k: run.data.tags[k] for k in (L.STAGE, L.SWEEP_NAME, L.PRESET, L.KIND)} == {
        L.STAGE: L.STAGE_SWEEP, L.SWEEP_NAME: "t", L.PRESET: "smoke", L.KIND: L.KIND_GRID}
    config = json.loads(Path(client.download_artifacts(parent, L.SWEEP_CONFIG_ARTIFACT,
                                                       str(logged["root"]))).read_text())
    assert config["optuna_storage"] == "postgresql://u:***@db/optuna"
    experiment = client.get_experiment(run.info.experiment_id)
    expected = (logged["root"] / "mlartifacts" / "t").as_uri()
    assert experiment.artifact_location == artifact_location(uri, "t") == expected
    finish_parent_run(uri, parent, "FINISHED")
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(logged["still"].run_id).info.status == "KILLED"  # it was still running
    assert client.get_run(logged["again"].run_id).info.status == "FINISHED"


def test_an_optuna_parent_logs_to_its_own_experiment(logged):
    from mlflow.tracking import MlflowClient

    uri = logged["uri"]
    parent = start_parent_run(uri, "t", "smoke", L.KIND_OPTUNA, {L.OPTUNA_STORAGE: "mysql://u:pw@h/o"})
    log_optuna_best(uri, parent, [(2, None, 0.8, 0.75), (3, None, 0.7, None)], {"levels": []})
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert client.get_experiment(run.info.experiment_id).name == "t-optuna"
    assert run.data.tags[L.OPTUNA_STORAGE] == "mysql://u:***@h/o"  # masked even when the caller forgot
    assert [(m.step, m.value) for m in client.get_metric_history(parent, L.OPTUNA_BEST_VAL_ACC)] == [
        (2, 0.8), (3, 0.7)]
    assert [m.step for m in client.get_metric_history(parent, L.OPTUNA_BEST_TEST_ACC)] == [2]
    log_optuna_best(uri, parent, [(2, "ticket1", 0.9, 0.85), (2, "snip", 0.6, 0.5)], {"levels": []})
    metrics = client.get_run(parent).data.metrics
    assert metrics["best_val_acc_ticket1"] == 0.9 and metrics["best_val_acc_snip"] == 0.6


def test_reading_an_unknown_experiment_or_a_missing_store(logged, tmp_path):
    reader = TrackingReader(logged["uri"])
    listed = "no experiment named 'nope' at sqlite:///.*; experiments there: .*'t', 't-optuna'"
    with pytest.raises(TrackingError, match=listed):
        reader.experiment_runs("nope")
    missing = tmp_path / "absent.db"
    with pytest.raises(TrackingUnreachable, match="no MLflow store at"):
        TrackingReader(f"sqlite:///{missing}")
    assert not missing.exists()


def test_ui_hint_opens_the_runs_page():
    assert ui_hint("http://u:pw@mlflow:5000/", "7") == "open http://mlflow:5000/#/experiments/7/runs"
    assert ui_hint("https://mlflow.example/prefix", "7") == "open https://mlflow.example/prefix/#/experiments/7/runs"
    assert ui_hint("sqlite:////x/m.db", "0") == (
        "mlflow ui --backend-store-uri sqlite:////x/m.db  # then open http://127.0.0.1:5000/#/experiments/0/runs")
