"""Faults as they come: kill -9 of a CLI draw and of a sweep driver, identical CLI spends started
together, and a Ray node lost mid-spend. Each test counts the epochs that ran (or the processes
that trained), so it fails when resume or single-flight stops working, not only when results differ.

Every recipe here checkpoints each epoch (`recipe.checkpoint_seconds: 0`), so "a crash loses at most
one epoch" is exact: a resumed stage trains exactly the epochs after its newest checkpoint."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import tiny_ticket
from lth_core import paths
from lth_core.config import SpendConfig, TicketConfig, from_dict
from lth_core.lottery import draw, spend
from lth_core.store import ArtifactStore
from sweeps import runner
from sweeps.config import add_arguments, sweep_from_args
from trainables.common import spend_from_trial
from test_sweep import assert_same_spend, client_for, run_grid, runs_of, sweep_args, tune_trials

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
EVERY_EPOCH = ["--set", "ticket.recipe.checkpoint_seconds=0"]  # not part of any key: the drawn ticket serves
SPEND_EPOCHS = 4


def wait_for(what, predicate, seconds: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what} did not happen (process exit {proc.poll() if proc else None})\n{tail}")


def session_pids(sid: int) -> list[int]:
    """The processes of a session (a process this test started with start_new_session=True, and
    what it started: Ray's GCS, raylet, agents and workers)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            pids.append(int(stat.split("/")[2]))
    return pids


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def copy_tickets(drawn_store: ArtifactStore, root: Path) -> None:
    """A store holding the session's tiny draw (the sweeps' ticket), so a test pays only for spends."""
    shutil.copytree(Path(drawn_store.uri) / paths.TICKETS, root / "store" / paths.TICKETS)


def readable_epochs(pattern: str, key: str | None = None) -> list[int]:
    """Epochs of the Tune checkpoints (`state.pt`) matching `pattern` that load (of spend `key`)."""
    epochs = []
    for path in glob.glob(pattern):
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - still being written
            continue
        if key is None or state.get("spend_key") == key:
            epochs.append(int(state["epoch"]))
    return epochs


# ------------------------------------------------------------------------------ a CLI draw, kill -9


def test_a_cli_draw_killed_mid_level_trains_only_the_epochs_after_its_checkpoint(tmp_path):
    (tmp_path / "every_epoch.yaml").write_text("recipe: {checkpoint_seconds: 0}\n")
    store_dir, log = tmp_path / "store", tmp_path / "draw.log"
    argv = [sys.executable, "-m", "lth_core", "draw", "--store", str(store_dir), "--config",
            str(tmp_path / "every_epoch.yaml"), "--width", "0.125", "--epochs", "3", "--num-levels", "2",
            "--batch-size", "128", "--device", "cpu"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            checkpoint = wait_for("level 1's first checkpoint",
                                  lambda: glob.glob(f"{store_dir}/tickets/*/level_1/checkpoint.pt.sha256"),
                                  120, proc, log)[0]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    key = Path(checkpoint).parent.parent.name
    store = ArtifactStore(str(store_dir))
    assert not store.exists(paths.level_metrics(key, 1)), "level 1 finished before the kill"
    done = store.read_torch(paths.level_checkpoint(key, 1))["epoch"]
    assert 1 <= done < 3
    ticket = from_dict(TicketConfig, store.read_json(paths.ticket_config(key))["config"])
    assert ticket.key == key and ticket.recipe.checkpoint_seconds == 0

    ran: dict[str, list[int]] = defaultdict(list)
    summary = draw(ticket, store, lambda stage, record: ran[stage].append(record.epoch))
    assert "dense" not in ran, "the finished dense run must not train again"
    assert ran == {"level 1": list(range(done + 1, 4)), "level 2": [1, 2, 3]}, \
        f"level 1 must train only the epochs after its checkpoint (epoch {done}), level 2 all of them"
    assert [lv["level"] for lv in summary["levels"]] == [1, 2]
    assert not store.exists(paths.level_checkpoint(key, 1))


# ------------------------------------------------------------------------- identical CLI spends


def test_identical_cli_spends_started_together_train_once(drawn, tmp_path):
    """Three `python -m lth_core spend` of one spend at once: one trains, the others wait on the
    spend's lock and read its result. The test holds the lock until all three are at it, so they
    really overlap; the progress bar of the spend stage shows who trained."""
    store_dir = tmp_path / "store"
    copy_tickets(drawn[0], tmp_path)
    store = ArtifactStore(str(store_dir))
    key = SpendConfig(ticket=tiny_ticket(), level=2).key
    argv = [sys.executable, "-m", "lth_core", "spend", "--store", str(store_dir), "--width", "0.125", "--epochs", "2",
            "--batch-size", "128", "--device", "cpu", "--num-levels", "2", "--keep-epochs", "1", "--level", "2"]
    procs, logs = [], [tmp_path / f"spend{i}.log" for i in range(3)]
    with store.lock(paths.spend_lock(key)):
        try:
            for i, log in enumerate(logs):
                with open(log, "wb") as err, open(tmp_path / f"spend{i}.json", "wb") as out:
                    procs.append(subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=out, stderr=err))
            for proc, log in zip(procs, logs):  # each printed its plan: it is on its way to the lock
                wait_for("the spend's plan", lambda log=log: f"spends/{key}" in log.read_text(), 120, proc, log)
            time.sleep(1.5)
        except BaseException:
            for proc in procs:
                proc.kill()
                proc.wait()
            raise
    codes = [proc.wait(timeout=180) for proc in procs]
    errs = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], errs
    trained = [err for err in errs if "spend level 2" in err]  # the spend stage's progress bar
    assert len(trained) == 1, f"{len(trained)} of 3 identical spends trained:\n" + "\n---\n".join(errs)
    results = [json.loads((tmp_path / f"spend{i}.json").read_text()) for i in range(3)]
    assert {r["spend_key"] for r in results} == {key}
    assert len({(r["test_acc"], r["best_val_acc"]) for r in results}) == 1
    assert store.read_json(paths.spend_result(key))["test_acc"] == results[0]["test_acc"]


# ------------------------------------------------------------------------- a sweep driver, kill -9


def experiment_state_epochs(experiment: Path) -> dict[str, int]:
    """Per trial id, the epoch of the last result Tune's saved experiment state holds (0: none):
    a restore resumes a trial from this result's checkpoint or an older one."""
    (state_file,) = experiment.glob("experiment_state-*.json")
    epochs = {}
    for trial_json, metadata in json.loads(state_file.read_text())["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        meta = json.loads(metadata) if isinstance(metadata, str) else metadata
        epochs[trial["trial_id"]] = int((meta.get("last_result") or {}).get("epoch", 0))
    return epochs


def reference_spends(argv: list[str], drawn_store: ArtifactStore, root: Path) -> tuple[ArtifactStore, list]:
    """The sweep's spends run without interruption, in-process, into a store of their own."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sweep = sweep_from_args(parser.parse_args(argv))
    copy_tickets(drawn_store, root)
    reference = ArtifactStore(str(root / "store"))
    for cfg in sweep.spends():
        spend(cfg, reference)
    return reference, sweep.spends()


def test_a_sweep_driver_killed_mid_spend_resumes_its_trial_from_the_newest_checkpoint(
        drawn, ray_session, tmp_path, monkeypatch):
    """kill -9 of `sweeps/full_grid.py` (its in-process Ray goes with it) right after the spend
    trial's checkpoint reached the disk, before Tune saved an experiment state naming it; then the
    same command again. The trial must resume from that checkpoint, not from the older one Tune's
    state names; the child run the killed driver left RUNNING is marked KILLED when the resumed
    sweep starts, and ends FINISHED as the only run of its trial."""
    root = tmp_path / "sweep"
    root.mkdir()
    copy_tickets(drawn[0], root)
    argv = sweep_args(root, "killed", "--levels", "2", "--set", "combos=[{}]", *EVERY_EPOCH,
                      "--set", f'spend_recipe={{"epochs": {SPEND_EPOCHS}}}')
    results, log = root / "results", root / "driver.log"
    with open(log, "wb") as err:
        driver = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "full_grid.py"), *argv], cwd=root, env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            checkpoints = f"{results}/killed-spends-*/*/checkpoint_*/state.pt"
            wait_for("a spend checkpoint", lambda: readable_epochs(checkpoints), 240, driver, log)
            os.kill(driver.pid, signal.SIGKILL)  # the driver only: its Ray follows it
            driver.wait()
            time.sleep(1)
        finally:
            driver.kill()
            driver.wait()
            kill_session(driver.pid)  # whatever of its Ray outlived it (agents)
    (experiment,) = results.glob("killed-spends-????????")
    on_disk = max(readable_epochs(f"{experiment}/*/checkpoint_*/state.pt"))
    (named,) = experiment_state_epochs(experiment).values()
    assert named < on_disk, "Tune saved its state after the newest checkpoint: the kill came too late to test"
    _, _, (run,) = runs_of(root, "killed")
    assert run.info.status == "RUNNING"  # the killed driver could not close it
    logged = max(m.step for m in client_for(root).get_metric_history(run.info.run_id, "val_acc"))

    statuses_at_start = {}
    draw_stage = runner.draw_stage

    def spy(sweep, parent):  # the resumed sweep's session is open, no trial runs yet
        statuses_at_start.update({r.info.run_id: r.info.status for r in runs_of(root, "killed")[2]})
        return draw_stage(sweep, parent)

    monkeypatch.setattr(runner, "draw_stage", spy)
    resumed = run_grid(root, argv)
    assert resumed.code == 0, resumed.err[-3000:]
    assert statuses_at_start == {run.info.run_id: "KILLED"}, "a child run left RUNNING by the killed driver"
    assert re.search(r"^\[1/1\] imp t0 vanilla L2 seed 0: test acc ", resumed.err, re.M), resumed.err[-2000:]

    (trial,) = tune_trials(results, "killed-spends")
    assert trial.status == "TERMINATED" and trial.last_result["epoch"] == SPEND_EPOCHS
    resumed_from = SPEND_EPOCHS - trial.last_result["iterations_since_restore"]
    assert resumed_from == on_disk, (f"resumed after epoch {resumed_from}, the newest checkpoint on disk was epoch "
                                     f"{on_disk} (Tune's state named epoch {named} at most)")
    assert logged - resumed_from <= 1, f"{logged - resumed_from} epochs done before the kill were trained again"

    parent, draws, spends = runs_of(root, "killed")
    assert parent.info.status == "FINISHED" and len(draws) == 1 and len(spends) == 1
    assert all(r.info.status == "FINISHED" for r in draws + spends)
    steps = [m.step for m in client_for(root).get_metric_history(spends[0].info.run_id, "val_acc")]
    assert sorted(steps) == list(range(1, SPEND_EPOCHS + 1))  # each epoch logged once
    reference, (cfg,) = reference_spends(argv, drawn[0], tmp_path / "reference")
    assert_same_spend(ArtifactStore(str(root / "store")), reference, cfg.key)


# ------------------------------------------------------------------------- a Ray node lost mid-spend

TWO_NODES = r"""
import glob, json, os, sys, threading, time
root = sys.argv[1]
os.environ["LTH_SHARED_FS"] = "1"  # both nodes are this machine: the store and MLflow's sqlite are shared
import ray, torch
from ray.cluster_utils import Cluster
from mlflow.tracking import MlflowClient

started = time.time()
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
cluster.wait_for_nodes()
raylet = worker.all_processes["raylet"][0].process.pid
info = {"cluster_seconds": round(time.time() - started, 1)}

def ancestors(pid):
    chain = []
    while pid > 1:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        chain.append(pid)
    return chain

def spend_on_worker_node():  # the spend whose lock a process of the worker node holds
    for lock in glob.glob(f"{root}/store/locks/spend-*.lock"):
        try:
            holder = json.load(open(lock))
        except (OSError, ValueError):
            continue
        if raylet in ancestors(holder["pid"]):
            return os.path.basename(lock)[len("spend-"):-len(".lock")]

def checkpoints_of(key):
    epochs = []
    for path in glob.glob(f"{root}/results/*-spends-*/*/checkpoint_*/state.pt"):
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:
            continue
        if state.get("spend_key") == key:
            epochs.append(int(state["epoch"]))
    return epochs

def remove_worker_node_mid_spend():
    deadline = time.time() + 200
    while time.time() < deadline:
        key = spend_on_worker_node()
        if key and checkpoints_of(key):
            cluster.remove_node(worker, allow_graceful=False)  # its raylet and workers die
            info.update(killed_spend=key, killed_at=round(time.time() - started, 1))
            time.sleep(1)
            info["disk_epoch"] = max(checkpoints_of(key))
            client = MlflowClient(f"sqlite:///{root}/mlflow.db")
            (run,) = client.search_runs([client.get_experiment_by_name("two").experiment_id],
                                        filter_string=f"tags.spend_key = '{key}'")
            info["logged_epoch"] = max(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
            return
        time.sleep(0.05)

threading.Thread(target=remove_worker_node_mid_spend, daemon=True).start()
from sweeps import full_grid
info["code"] = full_grid.main(json.loads(sys.argv[2]) + ["--ray-address", cluster.address])
info["seconds"] = round(time.time() - started, 1)
print("INFO " + json.dumps(info), flush=True)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_a_sweep_finishes_on_the_remaining_node_when_a_node_dies_mid_spend(drawn, tmp_path):
    """Two Ray nodes on this machine (`ray.cluster_utils.Cluster`: a head and a worker node of one
    CPU each, in a subprocess), a shared local store, two spends, one on each node. The worker
    node is removed (its raylet and workers killed) right after its spend checkpointed. The sweep
    restarts the lost trial on the head node from its newest checkpoint; MLflow holds one run per
    trial, and the stored results equal an uninterrupted run's."""
    root = tmp_path / "sweep"
    root.mkdir()
    copy_tickets(drawn[0], root)
    argv = sweep_args(root, "two", "--set", "combos=[{}]", *EVERY_EPOCH,
                      "--set", f'spend_recipe={{"epochs": {SPEND_EPOCHS}}}')
    log = root / "cluster.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", TWO_NODES, str(root), json.dumps(argv)], cwd=root, env=ENV,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            proc.kill()
            proc.wait()
            kill_session(proc.pid)
    lines = [line for line in out.splitlines() if line.startswith("INFO ")]
    assert lines, log.read_text()[-4000:]
    info = json.loads(lines[-1][len("INFO "):])
    assert info["code"] == 0, log.read_text()[-4000:]
    assert "killed_spend" in info, f"the worker node was never removed mid-spend: {info}"
    assert "restarting them from their last checkpoint" in log.read_text()

    trials = tune_trials(root / "results", "two-spends")
    assert len(trials) == 2 and {t.status for t in trials} == {"TERMINATED"}
    (lost,) = [t for t in trials if spend_from_trial(t.config).key == info["killed_spend"]]
    resumed_from = SPEND_EPOCHS - lost.last_result["iterations_since_restore"]
    assert resumed_from == info["disk_epoch"], (resumed_from, info)
    assert info["logged_epoch"] - resumed_from <= 1, info

    parent, draws, spends = runs_of(root, "two")
    assert parent.info.status == "FINISHED" and len(draws) == 1 and len(spends) == 2
    assert len({r.data.tags["trial_key"] for r in spends}) == 2
    assert all(r.info.status == "FINISHED" for r in draws + spends)
    client = client_for(root)
    for run in spends:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, SPEND_EPOCHS + 1)), steps
    reference, configs = reference_spends(argv, drawn[0], tmp_path / "reference")
    for cfg in configs:
        assert_same_spend(ArtifactStore(str(root / "store")), reference, cfg.key)
