"""sweeps/full_grid.py on the in-process Ray (the session's `ray_session`), tracked in a sqlite MLflow:
the MLflow layout of docs/tracking.md, one draw shared by every spend, the dry run, input errors that
stop the sweep before any work, and the faults a sweep must survive (a stopped sweep, a killed trial).

Most tests read the one tiny grid of the module fixture `grid` (2 tweaks x 2 levels of one ticket)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_ticket
from lth_core.config import SpendConfig, TweakConfig, to_dict
from lth_core.lottery import spend
from lth_core.store import ArtifactStore
from lth_core.tweaks import mlflow_params
from sweeps import full_grid, runner
from sweeps.config import add_arguments, sweep_from_args, trial_base
from tracking import layout as L

EPOCHS = 2
TINY = ["--width", "0.125", "--epochs", str(EPOCHS), "--num-levels", "2", "--prune-methods", "imp", "--levels", "1,2",
        "--set", "ticket.recipe.batch_size=128", "--set", 'combos=[{}, {"activation": "swish"}]']
PLATFORM_PARAMS = {f"platform.{name}" for name in ("cpu", "cpu_flags", "cpu_capability", "torch", "blas", "threads")}
SPEND_PARAMS = {"dataset", "arch", "width", "seed", "ticket_seed", "prune_method", "level", "sparsity",
                "live_sparsity", *mlflow_params(TweakConfig()), *PLATFORM_PARAMS}  # one per registered tweak
DRAW_PARAMS = {"dataset", "arch", "width", "seed", "ticket_seed", "prune_method", "levels", "prunable_weights",
               "live_weights", *PLATFORM_PARAMS}
FINAL_METRICS = {"final_best_val_acc", "final_test_acc", "final_wall_seconds", "final_device_seconds",
                 "final_vanilla_test_acc", "final_dense_test_acc"}


def sweep_args(root: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--name", name, "--store", str(root / "store"), "--results-dir", str(root / "results"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", *extra]


def run_grid(root: Path, argv: list[str]) -> SimpleNamespace:
    """full_grid.main with stdout/stderr captured, run from `root` (MLflow puts a sqlite store's
    artifacts under the working directory)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = full_grid.main(argv)
    return SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


def copy_ticket(src_store: Path, root: Path) -> None:
    """Start a store with the grid's drawn ticket, so a test only pays for its spends."""
    shutil.copytree(src_store / "tickets", root / "store" / "tickets")


def client_for(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def runs_of(root: Path, name: str) -> tuple[object, list, list]:
    """(parent run, draw runs, spend runs) of a sweep's experiment, asserting one experiment, one parent."""
    client = client_for(root)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment named {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r is not parents[0]]
    assert all(r.data.tags.get(L.PARENT_RUN_ID) == parents[0].info.run_id for r in children)
    draws = [r for r in children if r.data.tags.get("stage") == "draw"]
    spends = [r for r in children if r.data.tags.get("stage") == "spend"]
    assert len(draws) + len(spends) == len(children)
    return parents[0], draws, spends


def tune_trials(results_dir: Path, base: str) -> list:
    """Trials of the one Tune experiment named `base`-<fingerprint> under `results_dir`."""
    from ray.tune import ExperimentAnalysis

    (path,) = results_dir.glob(f"{base}-????????")
    return ExperimentAnalysis(str(path)).trials


def spend_key(level: int, **tweaks) -> str:
    return SpendConfig(ticket=tiny_ticket(), level=level, tweaks=TweakConfig(**tweaks)).key


@pytest.fixture(scope="module")
def grid(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    run = run_grid(root, sweep_args(root, "tiny"))
    assert run.code == 0, run.err[-4000:]
    store = ArtifactStore(str(root / "store"))
    ticket = tiny_ticket()
    return SimpleNamespace(root=root, run=run, store=store, store_path=root / "store", ticket=ticket,
                           summary=store.read_json(f"tickets/{ticket.key}/summary.json"))


# ------------------------------------------------------------------------------------------ the grid


def test_grid_prints_the_summary_table_of_the_stored_results(grid):
    lines = grid.run.out.strip().splitlines()
    experiment_id = client_for(grid.root).get_experiment_by_name("tiny").experiment_id
    assert lines[-1] == (f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{grid.root / 'mlflow.db'}  "
                         f"# then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")
    assert lines[-2].startswith("sweep 'tiny' finished in") and lines[-2].endswith(": 4 trials.")
    header = lines.index(next(line for line in lines if line.startswith("test acc")))
    assert lines[header].split()[2:] == ["L1", "L2"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:header + 3]}
    assert set(rows) == {"vanilla", "swish"}
    for tweak, tweaks in (("vanilla", {}), ("swish", {"activation": "swish"})):
        for column, level in enumerate((1, 2)):
            result = grid.store.read_json(f"spends/{spend_key(level, **tweaks)}/result.json")
            assert rows[tweak][column] == f"{result['test_acc']:.2%}"


def test_mlflow_holds_one_parent_and_a_child_per_trial(grid):
    parent, draws, spends = runs_of(grid.root, "tiny")
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    assert {k: parent.data.tags.get(k) for k in ("stage", "sweep_name", "preset", "kind")} == {
        "stage": "sweep", "sweep_name": "tiny", "preset": "smoke", "kind": "grid"}
    assert len(draws) == 1 and len(spends) == 4
    assert all(r.info.status == "FINISHED" for r in draws + spends)
    assert sorted((r.data.params["level"], r.data.tags["tweak"]) for r in spends) == [
        ("1", "swish"), ("1", "vanilla"), ("2", "swish"), ("2", "vanilla")]


def test_spend_runs_carry_the_documented_params_and_metrics(grid):
    client = client_for(grid.root)
    _, _, spends = runs_of(grid.root, "tiny")
    levels = {lv["level"]: lv for lv in grid.summary["levels"]}
    for run in spends:
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        assert set(params) == SPEND_PARAMS
        level = int(params["level"])
        tweaks = {"activation": "swish"} if tags["tweak"] == "swish" else {}
        key = spend_key(level, **tweaks)
        assert tags["spend_key"] == key and tags["ticket_key"] == grid.ticket.key
        result = grid.store.read_json(f"spends/{key}/result.json")
        assert params == {"dataset": "digits", "arch": "resnet18", "width": "0.125", "seed": "0", "ticket_seed": "0",
                          "prune_method": "imp", "level": str(level),
                          "sparsity": f"{levels[level]['sparsity']:.6f}",  # measured, not the target
                          "live_sparsity": f"{levels[level]['live_sparsity']:.6f}",
                          **mlflow_params(TweakConfig(**tweaks)), **L.platform_params(result["platform"])}
        for name in ("train_loss", "val_acc"):
            history = client.get_metric_history(run.info.run_id, name)
            assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
                (r["epoch"], r[name]) for r in result["history"]], name
        per_epoch_test = [m for m in client.get_metric_history(run.info.run_id, "test_acc")]
        assert [(m.step, m.value) for m in sorted(per_epoch_test, key=lambda m: m.step)] == [
            (r["epoch"], r["test_acc"]) for r in result["history"]]  # per epoch only, no final value among them
        assert FINAL_METRICS <= set(metrics) and not {"best_val_acc", "wall_seconds"} & set(metrics)
        assert metrics["final_best_val_acc"] == result["best_val_acc"]
        assert metrics["final_test_acc"] == result["test_acc"]  # at the best-validation epoch
        assert metrics["final_wall_seconds"] > 0
        assert metrics["final_device_seconds"] == pytest.approx(metrics["final_wall_seconds"])
        assert metrics["final_vanilla_test_acc"] == levels[level]["test_acc"]
        assert metrics["final_dense_test_acc"] == grid.summary["dense"]["test_acc"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "final_test_acc")] == [EPOCHS]


def test_the_draw_run_carries_ticket_params_and_per_level_metrics(grid):
    client = client_for(grid.root)
    _, (draw,), _ = runs_of(grid.root, "tiny")
    assert draw.data.tags["ticket_key"] == grid.ticket.key and draw.data.tags["tweak"] == "vanilla"
    assert set(draw.data.params) == DRAW_PARAMS and draw.data.params["levels"] == "2"
    metrics = draw.data.metrics
    assert metrics["dense_test_acc"] == grid.summary["dense"]["test_acc"]
    assert metrics["dense_best_val_acc"] == grid.summary["dense"]["best_val_acc"]
    assert metrics["wall_seconds"] > 0
    assert draw.data.params["live_weights"] == str(grid.summary["weights"]["live"])
    assert draw.data.params["platform.threads"] == grid.summary["platform"]["threads"]
    for name, field in (("vanilla_test_acc", "test_acc"), ("level_sparsity", "sparsity"),
                        ("level_live_sparsity", "live_sparsity")):
        history = sorted(client.get_metric_history(draw.info.run_id, name), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(lv["level"], lv[field]) for lv in grid.summary["levels"]]


def test_the_ticket_is_drawn_once_and_shared_by_every_spend(grid):
    assert [p.name for p in (grid.store_path / "tickets").iterdir()] == [grid.ticket.key]
    draw_trials = tune_trials(grid.root / "results", "tiny-draws")
    spend_trials = tune_trials(grid.root / "results", "tiny-spends")
    assert [t.status for t in draw_trials] == ["TERMINATED"]
    assert len(spend_trials) == 4 and {t.status for t in spend_trials} == {"TERMINATED"}
    results = sorted((grid.store_path / "spends").glob("*/result.json"))
    assert len(results) == 4
    assert {grid.store.read_json(f"spends/{p.parent.name}/result.json")["ticket_key"] for p in results} == {
        grid.ticket.key}
    # written by the draw stage, before any spend finished, and never again
    dense_metrics = grid.store_path / "tickets" / grid.ticket.key / "dense" / "metrics.json"
    assert dense_metrics.stat().st_mtime_ns < min(p.stat().st_mtime_ns for p in results)
    client = client_for(grid.root)
    _, (draw,), _ = runs_of(grid.root, "tiny")
    assert len(client.get_metric_history(draw.info.run_id, "dense_test_acc")) == 1


# ------------------------------------------------------------------------------ plan and early errors


def must_not_run(*args, **kwargs):
    raise AssertionError("work started")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, monkeypatch):
    for name in ("init_ray", "check_reachable", "start_parent_run", "draw_stage", "run_tuner"):
        monkeypatch.setattr(runner, name, must_not_run)
    run = run_grid(tmp_path, sweep_args(tmp_path, "tiny", "--dry-run"))
    assert run.code == 0, run.err
    assert "sweep 'tiny' (grid)" in run.err and "trials:  4" in run.err and "levels:  1, 2" in run.err
    assert "draws:   1 ticket(s)" in run.err and f"seed 0 (ticket {tiny_ticket().key})" in run.err
    assert f"sqlite:///{tmp_path}/mlflow.db" in run.err
    assert list(tmp_path.iterdir()) == []  # no MLflow db, no store, no Tune results
    assert "2 IMP levels, 2 epochs each; seed 0" in run.err
    rewound = run_grid(tmp_path, sweep_args(tmp_path, "tiny", "--dry-run", "--set", "ticket.pruning.rewind_epoch=1"))
    assert "2 IMP levels, 2 epochs each, rewound to epoch 1; seed 0" in rewound.err


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def gpus_beyond_the_cluster() -> str:
    import ray

    return str(int(ray.cluster_resources().get("GPU", 0)) + 1)


@pytest.mark.parametrize("extra, message", [
    (lambda: ["--set", 'combos=[{}, {"activation": "swishy"}]'], "error: combos[1].activation"),
    (lambda: ["--levels", "3"], "error: levels: level 3 is not drawn: the ticket has levels 0..2"),
    (lambda: ["--tracking-uri", closed_port_uri()], "error: cannot reach the MLflow tracking server at http://"),
    (lambda: ["--gpus-per-trial", gpus_beyond_the_cluster()], "GPU(s) of this machine; set --gpus-per-trial 0"),
    (lambda: ["--dataset", "cifar100", "--data-root", "/nonexistent"], "https://www.cs.toronto.edu/~kriz/cifar.html"),
], ids=["unknown-tweak-value", "level-not-drawn", "unreachable-tracking-server", "gpus-not-in-cluster",
        "data-files-missing"])
def test_bad_input_fails_before_any_work(ray_session, tmp_path, monkeypatch, extra, message):
    monkeypatch.setattr(runner, "start_parent_run", must_not_run)  # fail fast, not after a whole sweep
    started = time.perf_counter()
    run = run_grid(tmp_path, sweep_args(tmp_path, "bad", *extra()))
    assert run.code == 2, run.err[-2000:]
    assert time.perf_counter() - started < 30  # at once: never waiting on PENDING trials
    last = run.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, run.err[-2000:]
    assert run.out == ""
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".log"]  # checks that need Ray log
    assert written == []  # no MLflow db, no store, no Tune results


# ------------------------------------------------------------------------------------------ faults


def test_a_stopped_sweep_resumes_and_runs_only_the_unfinished_trials(grid, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) while the spends run, then the same command again."""
    copy_ticket(grid.store_path, tmp_path)
    argv = sweep_args(tmp_path, "stopped", "--max-concurrent", "1")
    results = tmp_path / "store" / "spends"
    sent = threading.Event()
    completed = []  # spend trials Tune has completed (a list: Tune pickles its callbacks)
    trial_lines = runner.trial_lines

    def counting_lines(sweep, total):
        lines = trial_lines(sweep, total)
        complete = lines.on_trial_complete

        def on_trial_complete(iteration, trials, trial, **info):
            complete(iteration, trials, trial, **info)
            if "level" in trial.config:
                completed.append(trial.trial_id)

        lines.on_trial_complete = on_trial_complete
        return lines

    monkeypatch.setattr(runner, "trial_lines", counting_lines)

    def interrupt_after_the_first_spend() -> None:
        # After Tune completed a spend trial, not merely after its result reached the store: a
        # trial still reporting when the stop comes is saved as unfinished, and rightly runs again.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not completed:
            time.sleep(0.02)
        sent.set()
        os.kill(os.getpid(), signal.SIGINT)  # Tune's handler stops the experiment and saves its state

    # A stray SIGINT outside Tune's handler must not end the test session.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        watcher = threading.Thread(target=interrupt_after_the_first_spend, daemon=True)
        watcher.start()
        stopped = run_grid(tmp_path, argv)
        watcher.join(timeout=5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent.is_set()
    assert stopped.code == 2, stopped.err[-3000:]
    assert "did not finish (the sweep was interrupted); rerun the same command" in stopped.err
    before = {p.parent.name: p.stat().st_mtime_ns for p in results.glob("*/result.json")}
    trials_before = {t.trial_id: (t.status, t.last_result.get("timestamp"))
                     for t in tune_trials(tmp_path / "results", "stopped-spends")}
    finished_before = {tid for tid, (status, _) in trials_before.items() if status == "TERMINATED"}
    assert 1 <= len(before) < 4 and 1 <= len(finished_before) < 4, (before, trials_before)
    parent, _, _ = runs_of(tmp_path, "stopped")
    assert parent.info.status == "FAILED"

    resumed = run_grid(tmp_path, argv)
    assert resumed.code == 0, resumed.err[-3000:]
    assert "restoring stopped-spends-" in resumed.err
    trials_after = {t.trial_id: (t.status, t.last_result.get("timestamp"))
                    for t in tune_trials(tmp_path / "results", "stopped-spends")}
    assert len(trials_after) == 4 and set(trials_before) <= set(trials_after)  # the same experiment, continued
    assert {status for status, _ in trials_after.values()} == {"TERMINATED"}
    for tid in finished_before:  # a finished trial did not run again
        assert trials_after[tid] == trials_before[tid]
    after = {p.parent.name: p.stat().st_mtime_ns for p in results.glob("*/result.json")}
    assert len(after) == 4 and all(after[key] == mtime for key, mtime in before.items())
    # MLflow: still one parent, one child per trial, one value per epoch
    parent, draws, spends = runs_of(tmp_path, "stopped")
    assert parent.info.status == "FINISHED" and len(draws) == 1 and len(spends) == 4
    assert len({r.data.tags["trial_key"] for r in spends}) == 4
    client = client_for(tmp_path)
    for run in spends:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.data.tags["tweak"], steps)
        assert run.data.metrics["final_test_acc"] == grid.store.read_json(
            f"spends/{run.data.tags['spend_key']}/result.json")["test_acc"]  # same numbers as the grid


class Killed(Exception):
    """Stands in for a process killed right after an epoch's checkpoint was taken."""


def checkpoint_after_epoch_1(cfg: SpendConfig, store: ArtifactStore) -> dict:
    saved: dict = {}

    def die(record, payload) -> None:
        if record.epoch == 1:
            saved.update(payload())
            raise Killed

    with pytest.raises(Killed):
        spend(cfg, store, on_epoch=die, persist_checkpoints=False)
    return saved


def assert_same_spend(store: ArtifactStore, reference: ArtifactStore, key: str) -> dict:
    result, expected = (s.read_json(f"spends/{key}/result.json") for s in (store, reference))
    for field in ("best_epoch", "best_val_acc", "test_acc", "final_val_acc", "final_test_acc"):
        assert result[field] == expected[field], field
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in result["history"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in expected["history"]]
    weights, expected_weights = (s.read_tensors(f"spends/{key}/final.safetensors") for s in (store, reference))
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected_weights[name]), name
    return result


def test_a_spend_resumed_from_its_checkpoint_ends_like_an_uninterrupted_one(grid, tmp_path):
    copy_ticket(grid.store_path, tmp_path)
    store = ArtifactStore(str(tmp_path / "store"))
    cfg = SpendConfig(ticket=grid.ticket, level=2, tweaks=TweakConfig(activation="swish"))
    payload = checkpoint_after_epoch_1(cfg, store)
    assert payload["epoch"] == 1 and not store.exists(f"spends/{cfg.key}/result.json")
    assert not store.exists(f"spends/{cfg.key}/checkpoint.pt")  # persist_checkpoints=False: Ray keeps it
    ran = []
    spend(cfg, store, resume=payload, persist_checkpoints=False, on_epoch=lambda record, _: ran.append(record.epoch))
    assert ran == list(range(2, EPOCHS + 1)), "a resumed spend trains only the epochs after its checkpoint"
    assert_same_spend(store, grid.store, cfg.key)  # the grid ran it without interruption


def test_the_spend_trainable_counts_the_epochs_before_its_checkpoint(grid, tmp_path, monkeypatch):
    """The best epoch may lie before the checkpoint a trial resumed from: the numbers a restored
    trial reports to Tune (and the summary table prints) must still be those of the whole run."""
    import trainables.common as common_module
    import trainables.spend as spend_module
    from ray import tune

    copy_ticket(grid.store_path, tmp_path)
    store = ArtifactStore(str(tmp_path / "store"))
    cfg = SpendConfig(ticket=grid.ticket, level=1)
    payload = checkpoint_after_epoch_1(cfg, store)
    payload["history"][0]["val_acc"] = 1.0  # epoch 1 validated best
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save(payload, folder / common_module.STATE_FILE)
    reports = []
    fake_tune = SimpleNamespace(Checkpoint=tune.Checkpoint,
                                get_checkpoint=lambda: tune.Checkpoint.from_directory(str(folder)),
                                report=lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(common_module, "tune", fake_tune)  # the trainables' Tune checkpoints and reports
    config = {"store": str(tmp_path / "store"), "tracking_uri": None, "parent_run_id": None,
              "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "spend_recipe": None,
              "ticket": to_dict(grid.ticket), "level": 1, "tweaks": to_dict(TweakConfig()), "seed": 0}
    spend_module.spend_trainable(config)
    assert [r["epoch"] for r in reports] == [2]  # resumed after epoch 1
    result = store.read_json(f"spends/{cfg.key}/result.json")
    assert result["best_epoch"] == 1 and result["best_val_acc"] == 1.0
    assert reports[-1]["best_val_acc"] == 1.0
    assert reports[-1]["best_test_acc"] == result["test_acc"] == payload["history"][0]["test_acc"]


def test_a_trial_killed_mid_run_resumes_from_its_ray_checkpoint(grid, tmp_path):
    """SIGKILL of the trial's worker process while it reports epoch 2 (after logging it to MLflow,
    before its checkpoint reached Tune): Tune restarts it from the epoch-1 checkpoint."""
    from ray import tune

    copy_ticket(grid.store_path, tmp_path)
    marker = str(tmp_path / "killed.pid")

    def killed_once(config):  # a closure: Ray pickles it by value into the worker
        import os
        import signal

        import trainables.common as common_module
        import trainables.spend as spend_module

        real = common_module.tune

        class KillAtEpoch2:
            def __getattr__(self, name):
                return getattr(real, name)

            def report(self, metrics, checkpoint=None):
                if metrics.get("epoch") == 2 and not os.path.exists(marker):
                    with open(marker, "w") as f:
                        f.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                real.report(metrics, checkpoint=checkpoint)

        common_module.tune = KillAtEpoch2()  # where the trainables report epochs to Tune
        try:
            spend_module.spend_trainable(config)
        finally:
            common_module.tune = real

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sweep = sweep_from_args(parser.parse_args(sweep_args(tmp_path, "killed", "--levels", "1", "--set", "combos=[{}]")))
    with contextlib.chdir(tmp_path):
        parent = runner.start_parent_run(sweep.tracking_uri, sweep.name, "smoke", "grid")
    results = runner.run_tuner("killed-spends", killed_once, sweep, full_grid.spend_space(sweep, parent),
                               tune.TuneConfig(metric="val_acc", mode="max"))
    runner.finish_parent_run(sweep.tracking_uri, parent, "FINISHED")

    assert Path(marker).is_file() and int(Path(marker).read_text()) != os.getpid()  # a worker was killed
    (result,) = list(results)
    assert result.error is None
    assert result.metrics["epoch"] == EPOCHS and result.metrics["iterations_since_restore"] == 1  # from epoch 1
    key = spend_key(1)
    expected = assert_same_spend(ArtifactStore(str(tmp_path / "store")), grid.store, key)
    assert result.metrics["best_test_acc"] == expected["test_acc"]
    _, _, (run,) = runs_of(tmp_path, "killed")
    assert run.info.status == "FINISHED" and run.data.tags["spend_key"] == key
    steps = [m.step for m in client_for(tmp_path).get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))  # epoch 2 was logged once, not again after the restart


def test_a_changed_grid_under_the_same_name_runs_the_new_trials(grid, tmp_path):
    """Tune's restore would hand back the old grid's trials: a changed grid gets its own experiment,
    and the spends both grids share come back from the store without training again."""
    shutil.copytree(grid.root / "store", tmp_path / "store")
    shutil.copytree(grid.root / "results", tmp_path / "results")
    shutil.copy(grid.root / "mlflow.db", tmp_path / "mlflow.db")
    shared = grid.store_path / "spends" / spend_key(2) / "result.json"
    argv = sweep_args(tmp_path, "tiny", "--levels", "2")
    argv[argv.index('combos=[{}, {"activation": "swish"}]')] = 'combos=[{}, {"activation": "mish"}]'
    before = (tmp_path / "store" / "spends" / spend_key(2) / "result.json").stat().st_mtime_ns
    changed = run_grid(tmp_path, argv)
    assert changed.code == 0, changed.err[-3000:]
    assert "mish" in changed.out and "swish" not in changed.out
    assert (tmp_path / "store" / "spends" / spend_key(2, activation="mish") / "result.json").exists()
    assert (tmp_path / "store" / "spends" / spend_key(2) / "result.json").stat().st_mtime_ns == before
    assert shared.exists()
    assert len(list((tmp_path / "results").glob("tiny-spends-*"))) == 2


def fake_nodes(*resources):
    return lambda: [{"Alive": True, "Resources": r} for r in resources]


def test_resources_are_checked_per_node_and_storage_on_multi_node_clusters(tmp_path, monkeypatch):
    import ray

    from sweeps.config import SweepConfig, resolve_paths

    local = resolve_paths(SweepConfig(store=str(tmp_path / "s"), results_dir=str(tmp_path / "r"),
                                      tracking_uri=f"sqlite:///{tmp_path}/m.db", gpus_per_trial=2))
    monkeypatch.setattr(ray, "nodes", fake_nodes({"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}))
    with pytest.raises(runner.SweepError, match="no Ray node has more than 1"):
        runner.check_resources(local)  # two GPUs in the cluster, but never two on one node
    one_gpu = SweepConfig(**{**local.__dict__, "gpus_per_trial": 1.0})
    with pytest.raises(runner.SweepError, match="--store, --results-dir, --tracking-uri"):
        runner.check_resources(one_gpu)
    monkeypatch.setenv("LTH_SHARED_FS", "1")
    runner.check_resources(one_gpu)
    monkeypatch.delenv("LTH_SHARED_FS")
    shared = SweepConfig(**{**one_gpu.__dict__, "store": "s3://b/t", "results_dir": "s3://b/r",
                            "tracking_uri": "http://mlflow:5000"})
    runner.check_resources(shared)
    monkeypatch.setattr(ray, "nodes", fake_nodes({"CPU": 8}))
    runner.check_resources(SweepConfig(**{**local.__dict__, "gpus_per_trial": 0.0}))  # one node: local is fine


def test_local_paths_become_absolute_for_trials_that_run_elsewhere(tmp_path, monkeypatch):
    from lth_core.config import DataConfig, TicketConfig
    from sweeps.config import SweepConfig, resolve_paths

    monkeypatch.chdir(tmp_path)
    sweep = resolve_paths(SweepConfig(ticket=TicketConfig(data=DataConfig(name="cifar10", root="data")),
                                      store="st", results_dir="res", tracking_uri="mlruns",
                                      optuna_storage="sqlite:///o.db"))
    assert sweep.ticket.data.root == str(tmp_path / "data") and sweep.store == str(tmp_path / "st")
    assert sweep.tracking_uri == (tmp_path / "mlruns").as_uri()
    assert sweep.optuna_storage == f"sqlite:///{tmp_path}/o.db"
    assert resolve_paths(SweepConfig(tracking_uri="http://mlflow:5000")).tracking_uri == "http://mlflow:5000"


def test_families_and_analysed_epochs_expand_into_tickets_spends_and_trials(tmp_path):
    """The generalization preset draws a ticket per architecture (and data set) and seed; epochs
    to analyse become every spend's snapshots, in the trial config too, and never change a key."""
    from lth_core.config import ConfigError, from_dict
    from sweeps import optuna_search
    from sweeps.config import PRESETS, SweepConfig
    from trainables.common import spend_from_trial

    preset = PRESETS["generalization"]()
    sweep = from_dict(SweepConfig, {**preset, "analyze_epochs": [1, 8]})
    tickets = sweep.tickets()
    assert [(t.data.name, t.model.arch, t.seed) for t in tickets[:4]] == [
        ("digits", "resnet18", 0), ("digits", "resnet18", 1), ("digits", "resnet18", 2), ("digits", "resnet34", 0)]
    assert len(tickets) == 12 and len(sweep.spends()) == 96
    assert {s.snapshot_epochs for s in sweep.spends()} == {(1, 8)}
    assert [s.key for s in sweep.spends()] == [s.key for s in from_dict(SweepConfig, preset).spends()]
    trial = {**trial_base(sweep, None), "ticket": to_dict(tickets[3]), "level": 4, "tweaks": {}}
    assert spend_from_trial(trial).snapshot_epochs == (1, 8)
    prefixes = [prefix for _, prefix in optuna_search.study_prefixes(sweep)]
    assert prefixes[:4] == ["generalization-resnet18-ticket0", "generalization-resnet18-ticket1",
                            "generalization-resnet18-ticket2", "generalization-resnet34-ticket0"]
    for change, words in (({"analyze_epochs": [9]}, "analyze_epochs: epoch 9 is not in a spend"),
                          ({"archs": ["resnet50"]}, "archs: unknown value 'resnet50'"),
                          ({"datasets": ["imagenet"]}, "datasets: unknown value 'imagenet'")):
        with pytest.raises(ConfigError, match=words):
            from_dict(SweepConfig, {**preset, **change})
    run = run_grid(tmp_path, ["--preset", "generalization", "--dry-run", "--store", str(tmp_path / "s"),
                              "--results-dir", str(tmp_path / "r"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert run.code == 0 and "draws:   12 ticket(s)" in run.err and "trials:  96" in run.err
    assert "digits, mobilenet x0.0625, 16 IMP levels, 8 epochs each; seeds 0, 1, 2" in run.err


def remote(cause: BaseException) -> Exception:
    """What a trial's error looks like when the trainable raised `cause` in a Ray worker."""
    from ray import exceptions as rx

    return rx.RayTaskError("spend_trainable", f"Traceback ...\n{type(cause).__name__}: {cause}",
                           cause).as_instanceof_cause()


def test_only_infrastructure_failures_are_retried():
    """A lost worker, actor or node, or an I/O error, is restored from its checkpoint; anything the
    trainable's own code raised (a bad input, a bug such as NaN in a JSON file) would recur, and
    fails once instead of training again twice."""
    from ray import exceptions as rx

    from trainables.common import TrialInputError

    assert runner.retryable(rx.ActorDiedError()) and runner.retryable(rx.WorkerCrashedError())
    assert runner.retryable(rx.NodeDiedError("node gone")) and runner.retryable(remote(ConnectionError("reset")))
    assert not runner.retryable(remote(ValueError("Out of range float values are not JSON compliant")))
    assert not runner.retryable(remote(TrialInputError("DatasetFormatError: truncated")))
    assert not runner.retryable(remote(RuntimeError("a bug")))


def test_a_restored_experiment_numbers_its_trial_lines_on_from_the_finished_trials(monkeypatch, capsys):
    """Tune brings a restored experiment's callbacks back as they were pickled when it started
    (their count at 0): the restored Tuner gets this run's per-trial lines instead, numbered on
    from the trials already finished."""
    from types import SimpleNamespace

    from ray import tune

    run_config = SimpleNamespace(callbacks=["the callback pickled at the start"])
    restored = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config),
                               get_results=lambda: SimpleNamespace(num_terminated=3))
    monkeypatch.setattr(tune.Tuner, "restore", classmethod(lambda cls, *args, **kwargs: restored))
    lines = runner.trial_lines(None, 5)
    assert runner._restore("results/x", None, {}, lines) is restored
    assert run_config.callbacks == [lines]
    trial = SimpleNamespace(config={"level": 2, "seed": 0, "ticket": {"seed": 1, "pruning": {"method": "imp"}}},
                            last_result={"test_acc": 0.5, "time_total_s": 3.0})
    run_config.callbacks[0].on_trial_complete(0, [], trial)
    assert capsys.readouterr().err == "[4/5] imp t1 vanilla L2 seed 0: test acc 50.00% (3 s)\n"


def test_the_draws_print_in_a_line_per_trained_ticket_and_per_source_drawn_at_init():
    """15 draws of a fidelity-sized sweep read as 5 + 2 lines, each with only the sweep's levels."""
    def summary(key, method, seed, dense=None):
        levels = [{"level": lv, "sparsity": 1 - 0.8 ** lv, **({"test_acc": 0.9 - lv / 100} if dense else {})}
                  for lv in range(1, 17)]
        return {"key": key, "config": {"seed": seed, "pruning": {"method": method}}, "levels": levels,
                "dense": {"test_acc": dense} if dense else None}

    summaries = [summary("k0", "imp", 0, 0.8691), summary("r0", "random", 0), summary("r1", "random", 1),
                 summary("s0", "snip", 0)]
    assert full_grid.draw_lines(summaries, (10, 16)) == [
        "ticket k0 (imp, seed 0): dense 86.91%, vanilla LTH L10 80.00% L16 74.00%",
        "random masks at initialisation (seed 0, 1): L10 89.3% L16 97.2% sparse",
        "snip masks at initialisation (seed 0): L10 89.3% L16 97.2% sparse"]


def test_an_epoch_reports_its_best_so_far_and_builds_the_state_only_for_a_due_checkpoint(monkeypatch):
    """Building the state copies the weights off the device: an epoch whose checkpoint is not due
    reports from the payload's history alone (earlier attempts' epochs included)."""
    from trainables import common
    from lth_core.training import EpochRecord, Payload

    reports, builds = [], []
    monkeypatch.setattr(common.tune, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    history = [EpochRecord(epoch=1, lr=0.1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.7, test_acc=0.6,
                           seconds=1.0),
               EpochRecord(epoch=2, lr=0.1, train_loss=0.8, train_acc=0.6, val_loss=0.9, val_acc=0.65, test_acc=0.7,
                           seconds=1.0)]

    def build():
        builds.append(1)
        return {"epoch": 2, "history": [vars(r) for r in history]}

    common.report_epoch(history[-1], Payload(build, due=False, history=history))
    assert builds == [] and reports[-1][1] is None
    assert reports[-1][0]["best_val_acc"] == 0.7 and reports[-1][0]["best_test_acc"] == 0.6
    common.report_epoch(history[-1], Payload(build, due=True, history=history))
    assert builds == [1] and reports[-1][1] is not None
