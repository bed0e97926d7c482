"""What a sweep checks before Ray starts: every place it writes to or reads from.

`check(sweep, optuna=...)` runs, in order: the artifact store (a probe file written, read back
and deleted), the Ray results folder, the MLflow tracking URI (a writable sqlite file or a
server that answers), the Optuna storage; then, for the in-process Ray ('local'), the CPUs and
GPUs a trial asks for, the data files (present and readable in their format), the tickets'
schedules and the tweaks' fit to the data; for any other `--ray-address`, that the cluster
answers within `RAY_CONNECT_TIMEOUT_S`. The first problem raises `SweepError` with one line: what is wrong,
then after '; ' what to do. Nothing is started and, apart from an empty store folder and the
results folder, nothing is written.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lth_core.inputs import InputError, probe_store, writable_folder
from sweeps.config import SweepConfig, combo_error
from sweeps.runner import SweepError
from tracking.probe import TrackingError, check_reachable, redact, sqlite_path

RAY_CONNECT_TIMEOUT_S = 15.0
STORAGE_CONNECT_TIMEOUT_S = 15.0
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def check(sweep: SweepConfig, *, optuna: bool = False) -> None:
    """Every check below, in order; raises SweepError at the first problem."""
    check_store(sweep.store)
    check_results_dir(sweep.results_dir)
    check_tracking(sweep.tracking_uri)
    if optuna:
        check_optuna_storage(sweep.optuna_storage)
    if sweep.ray_address == "local":  # on a cluster the data lives on the workers, not necessarily here
        check_local_resources(sweep)
        check_data(sweep, optuna=optuna)
    else:
        check_ray_address(sweep.ray_address)


def check_store(uri: str) -> None:
    try:
        probe_store(uri)
    except InputError as e:
        raise SweepError(str(e)) from None


def _writable_folder(folder: Path, what: str, flag: str) -> None:
    """`folder` is, or can be created as, a folder that takes files (nothing is left behind)."""
    try:
        writable_folder(folder)
    except OSError as e:
        raise SweepError(f"{what} {folder} is not writable ({e.strerror or e}); pass {flag} with a folder "
                         "you can write to") from None


def check_results_dir(results_dir: str) -> None:
    if "://" in results_dir and not results_dir.startswith("file://"):
        return  # s3://... and the like: Ray's storage layer reports its own errors
    path = urlsplit(results_dir).path if results_dir.startswith("file://") else results_dir
    _writable_folder(Path(path).expanduser(), "the Ray results folder", "--results-dir")


def _check_sqlite(url: str, what: str, flag: str) -> None:
    """A sqlite URL names a file that is a database (or can become one) in a writable folder."""
    path = sqlite_path(url)
    if not path:
        return
    file = Path(path).expanduser()
    if file.is_dir():
        raise SweepError(f"{what} {redact(url)} names a folder ({file}); pass {flag} sqlite:///<file>.db")
    _writable_folder(file.parent, f"the folder of {what} {redact(url)}:", flag)
    if file.exists():
        try:
            with sqlite3.connect(f"file:{file}?mode=rw", uri=True, timeout=5) as db:
                db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as e:
            raise SweepError(f"{what} {file} is not a usable sqlite database ({e}); pass {flag} with another "
                             "file, or move this one away") from None


def check_tracking(uri: str) -> None:
    try:
        check_reachable(uri)
    except TrackingError as e:
        raise SweepError(str(e)) from None
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        _check_sqlite(uri, "the MLflow tracking database", "--tracking-uri")
    elif scheme == "file":
        _writable_folder(Path(urlsplit(uri).path), "the MLflow file store", "--tracking-uri")
    elif scheme not in ("http", "https", "databricks", "postgresql", "mysql", "mssql") and "+" not in scheme:
        raise SweepError(f"--tracking-uri {redact(uri)}: unknown scheme {scheme!r}; use sqlite:///<file>.db, "
                         "http(s)://<server> or a database URL")


def _with_timeout(fn: Any, seconds: float) -> tuple[bool, BaseException | None]:
    """(finished, its exception) of `fn()` run in a daemon thread for at most `seconds`."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(outcome), outcome[0] if outcome else None


def check_optuna_storage(url: str) -> None:
    shown = redact(url)
    if url.startswith("sqlite:"):
        _check_sqlite(url, "the Optuna storage", "--optuna-storage")
        return
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
    except Exception as e:  # noqa: BLE001 - a bad URL or a missing driver
        raise SweepError(f"cannot open the Optuna storage {shown} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); pass --optuna-storage with a database URL "
                         "(sqlite:///optuna.db, postgresql://...) whose driver is installed") from None

    def connect() -> None:
        with engine.connect():
            pass

    finished, error = _with_timeout(connect, STORAGE_CONNECT_TIMEOUT_S)
    if not finished or error is not None:
        why = f"no answer within {STORAGE_CONNECT_TIMEOUT_S:g} s" if not finished else (
            str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise SweepError(f"cannot connect to the Optuna storage {shown} ({why.replace(url, shown)}); start the "
                         "database or pass another --optuna-storage")


def check_local_resources(sweep: SweepConfig) -> None:
    """The in-process Ray gets this machine's CPUs (or `--num-cpus`) and GPUs: a trial that asks for
    more would never start. (On a cluster, `runner.check_resources` asks the nodes once Ray is up.)"""
    import torch

    cpus = sweep.num_cpus or len(os.sched_getaffinity(0))
    if sweep.cpus_per_trial > cpus:
        where = f"--num-cpus {sweep.num_cpus}" if sweep.num_cpus else "this machine"
        raise SweepError(f"--cpus-per-trial {sweep.cpus_per_trial:g} is more than the {cpus} CPU(s) of the in-process "
                         f"Ray ({where}); lower --cpus-per-trial, or run on a cluster (--ray-address)")
    gpus = torch.cuda.device_count()
    if sweep.gpus_per_trial > gpus:
        raise SweepError(f"--gpus-per-trial {sweep.gpus_per_trial:g} is more than the {gpus} GPU(s) of this machine; "
                         "set --gpus-per-trial 0 to train on CPUs, or run on a cluster (--ray-address)")


def check_data(sweep: SweepConfig, *, optuna: bool = False) -> None:
    """The data files are there and readable, no ticket's schedule must empty a layer, and every
    tweak setting the sweep trains with (its combinations, or the Optuna space) works on the data
    set; a problem is named where the sweep sets it (ticket.pruning.levels, combos[2].rescale_init)."""
    from lth_core import tweaks
    from lth_core.config import ConfigError, TicketConfig
    from lth_core.data import load_dataset, unreadable
    from lth_core.lottery import check_schedule

    datasets = {}
    try:  # the data split and the schedule are the ticket's: ticket.data.val_fraction, ticket.pruning.levels
        for data in {t.data for t in sweep.tickets()}:
            problem = unreadable(data)
            if problem is not None:
                raise SweepError(problem)
            datasets[data] = load_dataset(data)
        for ticket in sweep.tickets():
            check_schedule(ticket, datasets[ticket.data])
    except ConfigError as e:
        raise e.rooted("ticket.", {f.name for f in dataclasses.fields(TicketConfig)}) from None
    settings = ([(f"optuna_space.{t.name}", tweaks.from_flat({t.name: value}), value)
                 for t in tweaks.REGISTRY for value in getattr(sweep.optuna_space, t.name)] if optuna else
                [(index, combo, None) for index, combo in enumerate(sweep.combos)])
    for where, setting, value in settings:
        for dataset in datasets.values():
            try:
                tweaks.check_dataset(setting, dataset)
            except ConfigError as e:
                raise (ConfigError(where, f"{value!r}: {e}") if optuna else combo_error(e, where)) from None


def _ray_endpoint(address: str) -> str:
    """host:port of the cluster `--ray-address` names ('auto': $RAY_ADDRESS, else the cluster that
    `ray start` left on this machine)."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address and RAY_CURRENT_CLUSTER.is_file():
            address = RAY_CURRENT_CLUSTER.read_text().strip()
        if not address or address == "auto":
            raise SweepError("--ray-address auto found no running Ray cluster (no $RAY_ADDRESS, no cluster "
                             "started on this machine); start one with `ray start --head`, or use "
                             "--ray-address local")
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if not parts.hostname or not parts.port:
        raise SweepError(f"--ray-address {redact(address)!r} is not host:port, ray://host:port, auto or local; "
                         "pass the address `ray start --head` printed")
    return f"{parts.hostname}:{parts.port}"


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    if address.startswith(("http://", "https://")):  # a Ray dashboard (job submission) address
        host = urlsplit(address)
        endpoint = f"{host.hostname}:{host.port or (443 if host.scheme == 'https' else 80)}"
    else:
        endpoint = _ray_endpoint(address)
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror if isinstance(e, OSError) and e.strerror
                                                               else str(e))
        raise SweepError(f"the Ray cluster at {redact(address)!r} does not answer on {endpoint} within "
                         f"{timeout:g} s ({why}); start it (`ray start --head`), check --ray-address, or use "
                         "--ray-address local for an in-process Ray") from None
