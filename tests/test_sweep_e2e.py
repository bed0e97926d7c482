"""The sweep against real servers: `ray job submit` to a `ray start` head (token auth), and a real
`mlflow server` read back over its REST API.

Each test starts its own server in its own process group, on free ports and (for Ray) a dedicated
temp dir, and stops only that: never `ray stop`, which would end every Ray on the machine."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lth_core.config import TweakConfig
from lth_core.tweaks import mlflow_params
from sweeps import full_grid
from tracking import layout as L
from tracking.probe import HEALTH_PATH

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
EPOCHS = 2
TINY = ["--width", "0.125", "--epochs", str(EPOCHS), "--num-levels", "2", "--prune-methods", "imp", "--levels", "2",
        "--set", "ticket.recipe.batch_size=128", "--set", 'combos=[{}, {"activation": "swish"}]']
SPEND_PARAMS = {"dataset", "arch", "width", "seed", "ticket_seed", "prune_method", "level", "sparsity",
                "live_sparsity", *mlflow_params(TweakConfig()),  # one per registered tweak
                *(f"platform.{name}" for name in ("cpu", "cpu_flags", "cpu_capability", "torch", "blas", "threads"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, token: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(url: str, token: str | None, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if http(url, token=token, timeout=2)[0] == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def pids_mentioning(*needles: str) -> list[int]:
    """Processes whose command line names one of our own temp folders (so: started by this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(n in cmdline for n in needles):
                found.append(int(entry.name))
    return found


def stop_group(proc: subprocess.Popen, grace: float, *needles: str) -> None:
    """End the process group we started (SIGTERM, then SIGKILL), then any stragglers that left it
    but still name our temp folders."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while needles and (left := pids_mentioning(*needles)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


# ------------------------------------------------------------------------------- ray job submit


def test_ray_job_submit_runs_the_grid_on_a_ray_head(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no stray RAY_ADDRESS
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, OMP_NUM_THREADS="1",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # the job's `python` is the venv's
    dashboard = free_port()
    address = f"http://127.0.0.1:{dashboard}"
    log = tmp_path / "head.log"
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", temp_dir, "--disable-usage-stats",
         "--include-log-monitor", "false"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        wait_for(f"{address}/api/version", token, head, log, timeout=120)
        assert http(f"{address}/api/version")[0] == 401  # token auth is on: no token, no access

        sweep = ["sweeps/full_grid.py", *TINY, "--name", "job", "--store", str(tmp_path / "store"),
                 "--results-dir", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        entrypoint = (f"python -c 'import sys; print(\"job python:\", sys.prefix)' && "
                      f"python {shlex.join(sweep)}")
        runtime_env = {"excludes": [".venv", ".git", "artifacts", "mlruns", "*.db", ".pytest_cache", "reports"],
                       "env_vars": {"OMP_NUM_THREADS": "1"}}
        job_id = f"sweep-{secrets.token_hex(4)}"
        for attempt in range(3):  # the head's job agent may register a moment after the dashboard
            submit = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
                 "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env), "--no-wait",
                 "--", "sh", "-c", entrypoint],
                env=env, capture_output=True, text=True, timeout=120)
            if submit.returncode == 0 or http(f"{address}/api/jobs/{job_id}", token=token)[0] == 200:
                break
            time.sleep(3)
        submitted = http(f"{address}/api/jobs/{job_id}", token=token)[0] == 200
        assert submitted, submit.stdout[-2000:] + submit.stderr[-2000:]

        deadline, status = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            code, body = http(f"{address}/api/jobs/{job_id}", token=token)
            assert code == 200, body
            status = json.loads(body)["status"]
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(2)
        logs = json.loads(http(f"{address}/api/jobs/{job_id}/logs", token=token)[1])["logs"]
        assert status == "SUCCEEDED", f"job {status}:\n{logs[-4000:]}\n{tail(log)}"

        cli = subprocess.run([str(VENV_BIN / "ray"), "job", "status", "--address", address, job_id],
                             env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and f"Job '{job_id}' succeeded" in cli.stdout + cli.stderr, cli.stdout + cli.stderr

        assert f"job python: {Path(sys.prefix)}" in logs  # the head's python: the venv's
        lines = logs.strip().splitlines()
        assert lines[-1].startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:///")
        assert lines[-2].startswith("sweep 'job' finished in") and lines[-2].endswith(": 2 trials.")
        header = next(i for i, line in enumerate(lines) if line.startswith("test acc"))
        assert lines[header].split()[2:] == ["L2"]
        assert {line.split()[0] for line in lines[header + 1:header + 3]} == {"vanilla", "swish"}
        assert len(list((tmp_path / "store" / "tickets").iterdir())) == 1
        assert len(list((tmp_path / "store" / "spends").glob("*/result.json"))) == 2
    finally:
        stop_group(head, 3, temp_dir, str(tmp_path))
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not pids_mentioning(temp_dir)


# ------------------------------------------------------------------------------- mlflow server


def test_the_sweep_logs_to_an_mlflow_server(ray_session, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow.log"
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        wait_for(f"{uri}{HEALTH_PATH}", None, server, log, timeout=180)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(tmp_path), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = full_grid.main([*TINY, "--name", "served", "--store", str(tmp_path / "store"),
                                   "--results-dir", str(tmp_path / "results"), "--tracking-uri", uri])
        assert code == 0, err.getvalue()[-4000:]
        assert re.search(rf"MLflow UI: open {re.escape(uri)}/#/experiments/\d+/runs\n", out.getvalue())

        api = f"{uri}/api/2.0/mlflow"
        status, body = http(f"{api}/experiments/get-by-name?experiment_name=served")
        assert status == 200, body
        experiment_id = json.loads(body)["experiment"]["experiment_id"]
        status, body = http(f"{api}/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
        assert status == 200, body
        runs = json.loads(body)["runs"]

        def tags(run):
            return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

        parents = [r for r in runs if tags(r).get("stage") == "sweep"]
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        assert tags(parents[0])["kind"] == "grid" and tags(parents[0])["sweep_name"] == "served"
        parent_id = parents[0]["info"]["run_id"]
        children = [r for r in runs if r is not parents[0]]
        assert len(children) == 1 + 2  # the draw, one spend per tweak
        assert all(tags(r)[L.PARENT_RUN_ID] == parent_id for r in children)
        assert sorted(tags(r)["stage"] for r in children) == ["draw", "spend", "spend"]
        for run in children:
            if tags(run)["stage"] != "spend":
                continue
            assert run["info"]["status"] == "FINISHED"
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert set(params) == SPEND_PARAMS and params["level"] == "2"
            assert params["activation"] == {"vanilla": "relu", "swish": "swish"}[tags(run)["tweak"]]
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert set(L.SPEND_FINAL_METRICS) <= set(metrics)
            assert 0 < metrics["final_test_acc"] <= 1 and metrics["final_wall_seconds"] > 0
            query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": "val_acc"})
            status, body = http(f"{api}/metrics/get-history?{query}")
            assert status == 200, body
            assert sorted(m["step"] for m in json.loads(body)["metrics"]) == list(range(1, EPOCHS + 1))
    finally:
        stop_group(server, 10)
