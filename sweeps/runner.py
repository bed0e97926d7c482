"""What both sweep entry points share: Ray start-up, the MLflow parent run's session (its
layout is the `tracking` package's), the draw stage, resource checks, restorable Tuners and the
closing summary."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from lth_core.config import ConfigError, canonical_json, to_dict
from lth_core.paths import ticket_summary
from sweeps.config import SweepConfig, trial_base
from tracking import layout
from tracking.probe import TrackingError, check_reachable, redact
from tracking.runs import finish_parent_run, start_parent_run, ui_hint


class SweepError(RuntimeError):
    """A sweep cannot start or did not finish; the message says what to do."""


LOOPBACK = "127.0.0.1"


def init_ray(sweep: SweepConfig) -> None:
    """In-process Ray for 'local' (never a foreign cluster by accident), else join the given one."""
    import ray

    if ray.is_initialized():
        return
    if sweep.ray_address == "local":
        _init_local_ray(ray, sweep)
        return
    try:
        ray.init(address=sweep.ray_address, log_to_driver=False)
    except (ValueError, ConnectionError) as e:
        shown = redact(sweep.ray_address)
        raise SweepError(f"cannot join the Ray cluster at {shown!r} ({str(e).replace(sweep.ray_address, shown)}); "
                         "check --ray-address, or use --ray-address local for an in-process Ray") from None


def _init_local_ray(ray: Any, sweep: SweepConfig) -> None:
    """An in-process Ray that only this machine can reach: every Ray process listens on 127.0.0.1
    (an open port of a Ray node runs any code it is sent), no dashboard, and no usage stats
    unless the user asked for them (RAY_USAGE_STATS_ENABLED).

    On Linux Ray turns a node address of 127.0.0.1 into the host's outward address, and its
    servers then listen on all interfaces; only its single-machine mode (the default on macOS
    and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) keeps the loopback address. Ray reads
    that variable when it is imported, so the flag is set on the module for the start."""
    from ray._private import ray_constants

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=sweep.num_cpus or None,
                 include_dashboard=False, dashboard_host=LOOPBACK,
                 log_to_driver=False, configure_logging=True, logging_level="WARNING")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def check_resources(sweep: SweepConfig) -> None:
    """A GPU request on a cluster without GPUs would leave trials PENDING forever: fail now."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if sweep.gpus_per_trial > gpus:
        raise SweepError(f"each trial asks for {sweep.gpus_per_trial:g} GPU but no Ray node has more than {gpus:g}; "
                         "set --gpus-per-trial 0 to run on CPUs, or add GPU workers")
    if sweep.cpus_per_trial > cpus:
        raise SweepError(f"each trial asks for {sweep.cpus_per_trial:g} CPUs but no Ray node has more than "
                         f"{cpus:g}; lower --cpus-per-trial")
    if len(nodes) > 1:  # trials on other nodes must reach the same store, tracking and results
        local = [what for what, uri in (("--store", sweep.store), ("--results-dir", sweep.results_dir))
                 if "://" not in uri or uri.startswith("file://")]
        if sweep.tracking_uri.startswith(("sqlite:", "file:")):
            local.append("--tracking-uri")
        if local and not _on_shared_filesystem():
            raise SweepError(f"the Ray cluster has {len(nodes)} nodes but {', '.join(local)} point(s) at local "
                             "storage: use s3://... for the store and results and an MLflow server "
                             "(http://...) for tracking, or set LTH_SHARED_FS=1 if those paths are on a "
                             "filesystem every node mounts")


def _on_shared_filesystem() -> bool:
    """The user vouches that local paths are mounted on every node (NFS, a shared volume)."""
    return os.environ.get("LTH_SHARED_FS") == "1"


def resources(sweep: SweepConfig) -> dict[str, float]:
    return {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}


def run_tuner(name: str, trainable: Callable, sweep: SweepConfig, param_space: dict[str, Any],
              tune_config: Any = None, expected_trials: int | None = None) -> Any:
    """Fit a Tuner, or restore it when a run of the same name exists: finished trials are kept,
    unfinished and errored ones resume from their last checkpoint. An interrupted fit (SIGINT: Tune
    returns normally) raises SweepError; `expected_trials` also catches trials not yet created then."""
    from ray import tune

    path = f"{sweep.results_dir.rstrip('/')}/{name}"
    wrapped = tune.with_resources(trainable, resources(sweep))
    restored = tune.Tuner.can_restore(path)
    if restored:
        print(f"restoring {name} from {redact(path)}", file=sys.stderr)
        tuner = tune.Tuner.restore(path, trainable=wrapped, param_space=param_space, resume_errored=True)
    else:
        tuner = tune.Tuner(wrapped, param_space=param_space, tune_config=tune_config or tune.TuneConfig(),
                           run_config=tune.RunConfig(name=name, storage_path=sweep.results_dir, verbose=1,
                                                     failure_config=tune.FailureConfig(max_failures=2),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]
    if errors:
        raise SweepError(f"{len(errors)} of {len(results)} trials of {name} failed; first error:\n{errors[0].error}\n"
                         f"Fix the cause and rerun the same command: finished trials are kept.")
    total = max(len(results), expected_trials or 0)
    if results.num_terminated < total:  # Tune returns normally after a Ctrl-C/SIGINT
        raise_unfinished(total - results.num_terminated, total, name)
    return results


def experiment_name(base: str, param_space: dict[str, Any]) -> str:
    """`base` plus a fingerprint of the trials' configs: rerunning the same sweep restores its Tune
    experiment, while a changed grid starts a new one instead of restoring stale trials (finished
    spends of the old grid are read back from the store in seconds). Resources are left out: a
    rerun with other CPU/GPU shares still resumes its trials."""
    what_runs = {k: v for k, v in param_space.items() if k not in ("cpus_per_trial", "gpus_per_trial")}
    return f"{base}-{hashlib.sha256(canonical_json(what_runs).encode()).hexdigest()[:8]}"


def raise_unfinished(missing: int, total: int, name: str) -> None:
    raise SweepError(f"{missing} of {total} trials of {name} did not finish (the sweep was interrupted); "
                     "rerun the same command to resume: finished trials are kept.")


def require_stored(sweep: SweepConfig, paths: list[str], name: str) -> None:
    """Every trial's result must be in the store: Tune can count a trial stopped by Ctrl-C as terminated."""
    from lth_core.store import ArtifactStore

    store = ArtifactStore(sweep.store)
    missing = sum(not store.exists(p) for p in paths)
    if missing:
        raise_unfinished(missing, len(paths), name)


def draw_stage(sweep: SweepConfig, parent_run_id: str | None) -> None:
    """Stage 1: every distinct ticket is drawn once (a no-op for tickets already in the store)."""
    from ray import tune

    from trainables.draw import draw_trainable

    tickets = sweep.tickets()
    space = {**trial_base(sweep, parent_run_id), "ticket": tune.grid_search([to_dict(t) for t in tickets])}
    name = experiment_name(f"{sweep.name}-draws", space)
    run_tuner(name, draw_trainable, sweep, space, expected_trials=len(tickets))
    require_stored(sweep, [ticket_summary(t.key) for t in tickets], name)


def plan_text(sweep: SweepConfig, trials: int, kind: str) -> str:
    tickets = sweep.tickets()
    lines = [f"sweep {sweep.name!r} ({kind})",
             f"  draws:   {len(tickets)} ticket(s): " + ", ".join(
                 f"{t.key} ({t.data.name}, {t.model.arch} x{t.model.width:g}, seed {t.seed}, "
                 f"{t.num_levels} {t.pruning.method.upper()} levels, {t.recipe.epochs} epochs each)" for t in tickets),
             f"  levels:  {', '.join(str(lv) for lv in sweep.spend_levels)}",
             f"  trials:  {trials}",
             f"  per trial: {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU"
             + (f", at most {sweep.max_concurrent} at once" if sweep.max_concurrent else ""),
             f"  store:   {redact(sweep.store)}",
             f"  mlflow:  {redact(sweep.tracking_uri)} (experiment {layout.experiment_name(sweep.name, kind)!r})",
             f"  ray:     {redact(sweep.ray_address)}, results in {redact(sweep.results_dir)}"]
    return "\n".join(lines)


def mlflow_ui_hint(sweep: SweepConfig, kind: str = layout.KIND_GRID) -> str:
    return ui_hint(sweep.tracking_uri, layout.experiment_name(sweep.name, kind))


@contextlib.contextmanager
def sweep_session(sweep: SweepConfig, preset: str, kind: str,
                  extra_tags: dict[str, str] | None = None) -> Iterator[str]:
    """Check the tracking server, start (or join) Ray, check resources, open the parent run (in
    the experiment of the sweep's kind, `tracking.layout.experiment_name`) and yield its id; the
    parent run ends FINISHED only when the body completes."""
    check_reachable(sweep.tracking_uri)
    if sweep.ray_address == "local":  # on a cluster the data lives on the workers, not necessarily here
        from lth_core.data import DatasetNotFoundError, check_files

        try:
            check_files(sweep.ticket.data)
        except DatasetNotFoundError as e:
            raise SweepError(str(e)) from None
    init_ray(sweep)
    check_resources(sweep)
    parent = start_parent_run(sweep.tracking_uri, sweep.name, preset, kind, extra_tags, config=to_dict(sweep))
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    finally:
        finish_parent_run(sweep.tracking_uri, parent, status)


def cli_main(doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse, run, and turn configuration and sweep errors into one clear line and exit status 2."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, SweepError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"
