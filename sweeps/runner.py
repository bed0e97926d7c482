"""What both sweep entry points share: Ray start-up, the MLflow parent run's session (its
layout is the `tracking` package's), the draw stage, resource checks, restorable Tuners and the
closing summary."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lth_core.config import ConfigError, TicketConfig, canonical_json, to_dict
from lth_core.inputs import Parser
from lth_core.paths import ticket_summary
from sweeps.config import SweepConfig, trial_base
from tracking import layout
from tracking.probe import TrackingError, check_reachable, redact
from tracking.runs import close_stale_children, experiment_of, finish_parent_run, start_parent_run, ui_hint


class SweepError(RuntimeError):
    """A sweep cannot start or did not finish; the message says what to do."""


INFRA_RETRIES = 2
"""How often trials that failed for a reason outside them (a killed worker, a lost node) are
restarted from their last checkpoint. A trial error the trainables mark deterministic
(`trainables.common.TrialInputError`: a config, data or store error) is not retried: it would
fail the same way again."""
LOG_LOGGERS = ("ray", "alembic", "mlflow", "optuna", "py.warnings", "filelock")
_log_path: str | None = None  # set by start_logs


LOOPBACK = "127.0.0.1"


def init_ray(sweep: SweepConfig) -> None:
    """In-process Ray for 'local' (never a foreign cluster by accident), else join the given one."""
    import ray

    if ray.is_initialized():
        return
    if sweep.ray_address == "local":
        _init_local_ray(ray, sweep)
    else:
        try:
            ray.init(address=sweep.ray_address, log_to_driver=False)
        except (ValueError, ConnectionError) as e:
            shown = redact(sweep.ray_address)
            raise SweepError(f"cannot join the Ray cluster at {shown!r} ({str(e).replace(sweep.ray_address, shown)}); "
                             "check --ray-address, or use --ray-address local for an in-process Ray") from None
    if _log_path:  # a sweep's entry point started its log (start_logs): ray.init added its own handlers
        log_to_file(_log_path)


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
    lines = trial_lines(sweep, expected_trials)
    if tune.Tuner.can_restore(path):
        print(f"restoring {name} from {redact(path)}", file=sys.stderr)
        tuner = _restore(path, wrapped, param_space, lines)
    else:
        # verbose=0: Tune's status tables go nowhere; `trial_lines` prints one line per finished trial.
        # No retries inside Tune (it cannot tell a deterministic error from a lost worker): the loop
        # below restores the experiment for trials that failed on the infrastructure only.
        # Checkpoints: the trainables checkpoint at most every few seconds (trainables.spend), and two
        # are kept, so Tune's forced experiment-state syncs (one per `num_to_keep` checkpoints of a
        # trial) stay rare.
        tuner = tune.Tuner(wrapped, param_space=param_space, tune_config=tune_config or tune.TuneConfig(),
                           run_config=tune.RunConfig(name=name, storage_path=sweep.results_dir, verbose=0,
                                                     callbacks=[lines],
                                                     failure_config=tune.FailureConfig(max_failures=0),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    results = _fit(tuner)
    for _ in range(INFRA_RETRIES):
        errors = [r for r in results if r.error is not None]
        if not errors or not all(retryable(r.error) for r in errors):
            break
        print(f"{len(errors)} trial(s) of {name} failed on the infrastructure ({one_line(errors[0].error)}); "
              "restarting them from their last checkpoint", file=sys.stderr)
        tuner = _restore(path, wrapped, param_space, lines)
        results = _fit(tuner)
    errors = [r for r in results if r.error is not None]
    if errors:
        first = next((r for r in errors if not retryable(r.error)), errors[0])
        label = trial_label(first.config) if first.config else "a trial"
        raise SweepError(f"{len(errors)} of {len(results)} trials of {name} failed; {label}: "
                         f"{one_line(first.error)}; fix the cause and rerun the same command: finished trials "
                         f"are kept (Ray's log: {redact(sweep_log_path(sweep))})")
    total = max(len(results), expected_trials or 0)
    if results.num_terminated < total:  # Tune returns normally after a Ctrl-C/SIGINT
        raise_unfinished(total - results.num_terminated, total, name)
    return results


def _restore(path: str, trainable: Any, param_space: dict[str, Any], lines: Any) -> Any:
    """Restore a Tune experiment with its unfinished and errored trials to run. The callbacks come
    back unpickled from when the experiment started, so the restored Tuner gets this run's
    per-trial lines instead, counting on from the trials already finished."""
    from ray import tune

    tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_errored=True)
    tuner._local_tuner.get_run_config().callbacks = [lines]  # Tune has no public setter for this
    try:
        lines.done = tuner.get_results().num_terminated
    except RuntimeError:  # Tune recorded no trial state yet: nothing has finished
        pass
    return tuner


def _fit(tuner: Any) -> Any:
    """`tuner.fit()` with Tune's legacy reporter at verbose=0, which prints nothing (the new one
    prints its experiment banner at any verbosity); RAY_AIR_NEW_OUTPUT=1 brings Tune's tables back."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tuner.fit()


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
             f"  draws:   {len(tickets)} ticket(s), each drawn once and shared by its trials:",
             *_ticket_kinds(tickets),
             f"  levels:  {', '.join(str(lv) for lv in sweep.spend_levels)}",
             f"  trials:  {trials}",
             *([f"  combos:  {' | '.join(c.describe() for c in sweep.combos)}; re-training seed(s) "
                f"{', '.join(str(s) for s in sweep.seeds)}"] if kind == layout.KIND_GRID else []),
             f"  per trial: {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU"
             + (f", at most {sweep.max_concurrent} at once" if sweep.max_concurrent else ""),
             f"  store:   {redact(sweep.store)}",
             f"  mlflow:  {redact(sweep.tracking_uri)} (experiment {layout.experiment_name(sweep.name, kind)!r})",
             f"  ray:     {redact(sweep.ray_address)}, results in {redact(sweep.results_dir)}, "
             f"Ray's and MLflow's logs in {redact(sweep_log_path(sweep))}"]
    return "\n".join(lines)


def _ticket_kinds(tickets: list[TicketConfig]) -> list[str]:
    """One plan line per kind of ticket (alike but for the seed): 15 draws read as 3 lines."""
    kinds: dict[str, list[TicketConfig]] = {}
    for t in tickets:
        subsets = [f"{n} {split} images" for n, split in ((t.data.train_size, "training"), (t.data.test_size, "test"))
                   if n]
        data = f"{t.data.name} ({', '.join(subsets)})" if subsets else t.data.name
        what = (f"{data}, {t.model.arch} x{t.model.width:g}, "
                + (f"{t.num_levels} {t.pruning.method} masks at initialisation, no training"
                   if t.pruning.source.at_init else
                   f"{t.num_levels} {t.pruning.method.upper()} levels, {t.recipe.epochs} epochs each"
                   f"{t.pruning.retrain_text}"))
        kinds.setdefault(what, []).append(t)
    return [f"    {what}; seed{'s' if len(same) > 1 else ''} {', '.join(str(t.seed) for t in same)}"
            + (f" (ticket {same[0].key})" if len(same) == 1 else "") for what, same in kinds.items()]


def mlflow_ui_hint(sweep: SweepConfig, parent_run_id: str) -> str:
    """How to open the runs page of the sweep's experiment (the one its parent run is in)."""
    return ui_hint(sweep.tracking_uri, experiment_of(sweep.tracking_uri, parent_run_id))


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
            for data in {t.data for t in sweep.tickets()}:
                check_files(data)
        except DatasetNotFoundError as e:
            raise SweepError(str(e)) from None
    init_ray(sweep)
    check_resources(sweep)
    parent = start_parent_run(sweep.tracking_uri, sweep.name, preset, kind, extra_tags, config=to_dict(sweep))
    stale = close_stale_children(sweep.tracking_uri, parent)  # no trial of this sweep runs yet
    if stale:
        print(f"marked {stale} child run(s) of an earlier, killed driver of {sweep.name!r} KILLED; their trials "
              "resume from their last checkpoints", file=sys.stderr)
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    finally:
        finish_parent_run(sweep.tracking_uri, parent, status)


def cli_main(doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse, run, and turn configuration and sweep errors into one clear line and exit status 2."""
    parser = Parser(description=doc.splitlines()[0])  # flag helps carry their defaults
    add_arguments(parser)
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LTH_DEBUG", "") not in ("", "0")
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume: finished trials are kept", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line unless --debug
        if debug:
            traceback.print_exc()
        message = error_text(e, args)
        if message is None:
            print(f"error: unexpected {type(e).__name__}: {one_line(e)}; rerun with --debug (or LTH_DEBUG=1) "
                  "for the traceback, and report it", file=sys.stderr)
            return 1
        print(f"error: {message}", file=sys.stderr)
        return 2


def error_text(e: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message of a user-facing error; None for anything else (a bug)."""
    import yaml

    from lth_core.data import DatasetFormatError, DatasetNotFoundError
    from lth_core.store import OutsideStoreError

    if isinstance(e, ConfigError):
        return config_error_text(e, getattr(args, "config", None), getattr(args, "set", []))
    if isinstance(e, (SweepError, TrackingError)):
        return str(e) if ";" in str(e) else f"{e}; fix it and run again"
    if isinstance(e, DatasetNotFoundError):
        return str(e).replace(" not found. Download", " not found; download", 1)
    if isinstance(e, DatasetFormatError):
        return f"{e}; download the data set again and point --data-root at the extracted folder"
    if isinstance(e, OutsideStoreError):
        return f"refused path: {e}"
    if isinstance(e, yaml.YAMLError):
        return f"--set or --config does not parse as YAML ({one_line(e)}); fix its value"
    return None


def config_error_text(e: ConfigError, config_file: str | None, set_items: Sequence[str] = ()) -> str:
    """`<field>: <what is wrong>; <what to do>`, naming the flags, or else the `--set` paths, that
    set the field and the fields it involves (`e.related`)."""
    from sweeps.config import FLAGS

    field = e.field_path
    if field.startswith("--"):
        return f"{e}; fix {field}" if field != "--config" else f"{e}; fix the file or pass another --config"
    if e.message.startswith("unknown field"):
        known = e.message.partition("known fields: ")[2]
        spelled = next((i.partition("=")[0].strip() for i in set_items
                        if i.partition("=")[0].strip().split(".")[0] == field), field)  # the --set path given
        todo = _meant(spelled) or ("remove or rename it" + (f" in {config_file}" if config_file else
                                                          " (--set or --config)"))
        return f"{field}: unknown field; {todo} (known fields: {known})"
    flags, sets = [], []  # the flags first: what a user most likely typed
    for path in (field, *e.related):
        flag = next((f for f, (dotted, _, _) in FLAGS.items() if dotted == path), None)
        settable = path.split("[")[0]  # combos[2].kd is set with the whole list: --set combos=[...]
        if flag:
            flags.append(flag)
        else:
            sets.append(f"--set '{settable}=[...]'" if "[" in path else f"--set {settable}=...")
    fixes = list(dict.fromkeys(flags + sets))
    where = f" (or {field.split('[')[0]} in {config_file})" if config_file else ""
    return f"{e}; fix {' or '.join(fixes)}{where}"


def _meant(field: str) -> str:
    """What an unknown top-level field of a sweep most likely meant, as a hint ('' when nothing)."""
    from lth_core.tweaks import TWEAKS

    head = field.split(".")[0]
    if head in TWEAKS:
        return f"tweaks are set per combination: --set 'combos=[{{{head}: ...}}]'"
    if head == "recipe":
        return f"use ticket.{field} (the draw's recipe) or spend_{field} (the spends')"
    if head in {f.name for f in dataclasses.fields(TicketConfig)}:
        return f"the ticket's fields are under ticket.: use --set ticket.{field}=..."
    return ""


def one_line(e: Any) -> str:
    """The last meaningful line of an error (a trial's error holds the remote traceback)."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~", "Traceback", "The above exception", "During handling")):
            return line[:400]
    return type(e).__name__


def retryable(e: Any) -> bool:
    """True for a trial that failed on the infrastructure: Ray lost its worker, actor or node, or
    an I/O call failed (a network or file-system hiccup); it is restored from its last checkpoint.
    An exception of the trainable's own code (a bad input, `trainables.common.TrialInputError`,
    or a bug) would only recur: that trial fails once."""
    from ray import exceptions as rx

    lost = (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError,
            rx.OutOfMemoryError, rx.ObjectLostError, rx.RaySystemError)
    if "TrialInputError" in str(e):  # the remote traceback names it
        return False
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ == "TrialInputError" for c in type(e).__mro__):
            return False
        if isinstance(e, (*lost, OSError)):
            return True
        e = getattr(e, "cause", None) or e.__cause__
    return False


def trial_label(config: dict[str, Any]) -> str:
    """`imp t0 vanilla L2 seed 0` for a spend trial (mask source, ticket seed, tweaks, level,
    re-training seed), `draw imp seed 0` for a draw trial."""
    ticket = config.get("ticket") or {}
    method = ticket.get("pruning", {}).get("method", "imp")
    if "level" not in config:
        return f"draw {method} seed {ticket.get('seed', 0)}"
    try:
        from trainables.common import tweaks_from_trial

        tweak = tweaks_from_trial(config).describe()
    except Exception:  # noqa: BLE001 - a label must not fail a sweep
        tweak = "?"
    return f"{method} t{ticket.get('seed', 0)} {tweak} L{config['level']} seed {config.get('seed', 0)}"


def trial_lines(sweep: SweepConfig, total: int | None) -> Any:
    """A Tune callback printing one line per finished trial on stderr: label, test accuracy
    (the stored result's, as the summary table shows it) and seconds."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.done = 0

        def _line(self, trial: Any, what: str) -> None:
            self.done += 1
            count = f"[{self.done:>{len(str(total or 0))}}/{total}]" if total else f"[{self.done}]"
            seconds = (trial.last_result or {}).get("time_total_s")
            took = f" ({seconds:.0f} s)" if seconds is not None else ""
            print(f"{count} {trial_label(trial.config)}: {what}{took}", file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            if "level" in trial.config:
                acc = _stored_test_acc(sweep, trial.config, result.get("test_acc"))
                self._line(trial, f"test acc {acc:.2%}" if isinstance(acc, float) else "done")
                return
            acc = result.get("dense_test_acc")  # none for a draw at initialisation: it trains nothing
            key = result.get("ticket_key", "")
            self._line(trial, f"ticket {key}, " + (f"dense test acc {acc:.2%}" if isinstance(acc, float)
                                                   else "masks drawn"))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "FAILED (see the error below)")

    return TrialLines()


def _stored_test_acc(sweep: SweepConfig, config: dict[str, Any], fallback: Any) -> Any:
    try:
        from lth_core.paths import spend_result
        from lth_core.store import ArtifactStore
        from trainables.common import spend_from_trial

        return ArtifactStore(sweep.store).read_json(spend_result(spend_from_trial(config).key))["test_acc"]
    except Exception:  # noqa: BLE001 - the line falls back to the last reported number
        return fallback


def start_logs(sweep: SweepConfig) -> str:
    """Send Ray's and MLflow's own output to the sweep's log file (`sweep_log_path`); returns it.
    Ray and MLflow set up their loggers when imported: they are imported first."""
    import mlflow  # noqa: F401
    import ray  # noqa: F401

    global _log_path
    _log_path = sweep_log_path(sweep)
    log_to_file(_log_path)
    return _log_path


def sweep_log_path(sweep: SweepConfig) -> str:
    """Where Ray's and MLflow's own logs of a sweep go: `<results dir>/<name>.log` (a local results
    folder), else ./ray_results/<name>.log."""
    local = "://" not in sweep.results_dir or sweep.results_dir.startswith("file://")
    folder = Path(sweep.results_dir.removeprefix("file://")) if local else Path("ray_results").resolve()
    return str(folder / f"{sweep.name}.log")


def log_to_file(path: str) -> None:
    """Ray's, MLflow's and Optuna's loggers (and Python warnings) write to `path` instead of the
    terminal: what a person reads is the plan, one line per trial and the tables."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LOG_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if type(old) is logging.StreamHandler or getattr(old, "stream", None) in (sys.stderr, sys.stdout):
                logger.removeHandler(old)
        if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
            logger.addHandler(handler)
        logger.propagate = False


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"
