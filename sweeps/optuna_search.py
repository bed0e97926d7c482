"""Optuna (TPE) search for the best re-training tweak combination at each sparsity level.

Stage 1 draws every ticket once (as the grid does); stage 2 runs, for each ticket and each
sparsity level, one Optuna study named `<prefix>-level<k>` (prefix = the sweep name; with
several mask sources `<name>-<source>`, with several ticket seeds `<name>-ticket<seed>`) over
`SweepConfig.optuna_space` (categorical: one dimension per registered tweak, its choices in flat
form, e.g. kd "off", "on" or "0.5,4"; see docs/tweaks.md). Trials run on Ray Tune through
`OptunaSearch` and maximise the spend trainable's `best_val_acc` (model selection on
validation); the test accuracy at the best-validation epoch is reported next to it.

    python sweeps/optuna_search.py --preset smoke                 # locally, Ray in-process
    python sweeps/optuna_search.py --preset smoke --dry-run       # the plan, touches nothing
    ray job submit --working-dir . -- python sweeps/optuna_search.py --preset paper \\
        --store s3://... --tracking-uri http://... --optuna-storage postgresql://...

Resuming and growing a study. The studies live in an RDB (`--optuna-storage`, sqlite by
default, a database URL on a cluster), so they outlive any one invocation. `--optuna-trials N`
asks for N *completed* trials per study. Every invocation, per study:

1. A Ray Tune experiment of an earlier invocation that was stopped before it finished
   (recorded in the study's user attribute `tune_runs`) is restored first with
   `runner.run_tuner`: finished trials are kept, running ones resume from their checkpoints
   and report into the Optuna trials they were started as.
2. When the study still has fewer than N completed trials, one new Tune experiment runs the
   difference. Each invocation gets its own experiment name, `<prefix>-optuna-level<k>` for the
   first and `<prefix>-optuna-level<k>-run<i>` after it, because restoring a *finished*
   experiment does nothing. `OptunaSearch` loads the existing study (load_if_exists), so TPE
   conditions on every earlier trial; its sampler seed is derived from the sweep seed, the level
   and the run index, so a rerun does not repeat the first run's random start-up draws. Trials
   an interrupted invocation left RUNNING that can no longer be resumed are marked FAIL first.
3. A study that already has N completed trials runs nothing: rerunning the same command only
   prints and logs the best combinations again.

A study remembers what it was searched for (ticket, level, recipe, seed: user attribute
`vanilla_spend_key`) and over which space; a rerun with a different ticket, recipe or space
under the same name stops with an error instead of mixing incomparable trials. Do not run two
invocations of the same sweep at once.

Output: a table of the best combination per level (and per ticket: its mask source and seed,
when there are several) on stdout, with vanilla LTH at the level (the draw's re-training, or for
a mask drawn at initialisation the vanilla spend when the store holds one); in the MLflow experiment
`<name>-optuna`, on the parent run (tags `kind=optuna`, `optuna_storage` with any password
masked, `optuna_study_prefix`) the metrics `best_val_acc` and `best_test_acc` (step = level) and
the artifact `optuna_best.json`; every study gets the user attributes `sweep_name`, `level`,
`ticket_key`, `sparsity`. Two trials TPE gives the same combination share one spend: run one after
the other, the second reads the first's result back from the store; run at once, the second waits for
the first (the spend's lock in the store) and reads it back too.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lth_core.config import SpendConfig, TicketConfig, TweakConfig, to_dict  # noqa: E402
from lth_core.tweaks import REGISTRY  # noqa: E402
from sweeps import preflight, runner  # noqa: E402
from sweeps.config import SweepConfig, add_arguments, sweep_from_args, trial_base  # noqa: E402
from tracking import layout  # noqa: E402
from tracking.probe import redact  # noqa: E402

METRIC, MODE = "best_val_acc", "max"
RUNS_ATTR = "tune_runs"


@dataclass(frozen=True)
class LevelStudy:
    """One study: a ticket at one sparsity level."""

    ticket: TicketConfig
    level: int
    prefix: str
    ticket_label: str = ""  # which of several tickets: "imp", "ticket1", "snip-ticket1" ("" with one)

    @property
    def study_name(self) -> str:
        return f"{self.prefix}-level{self.level}"

    @property
    def experiment_base(self) -> str:
        return f"{self.prefix}-optuna-level{self.level}"


def study_prefixes(sweep: SweepConfig) -> list[tuple[TicketConfig, str]]:
    """(ticket, study prefix): the sweep name, with `-<data set>`, `-<architecture>`, `-<mask source>`
    and `-ticket<seed>` for each of these the sweep has several of. Each ticket family gets studies
    of its own: one study across them would rank families and tweaks together, on different vanilla
    baselines."""
    tickets = sweep.tickets()
    parts = [lambda t: t.data.name, lambda t: t.model.arch, lambda t: t.pruning.method, lambda t: f"ticket{t.seed}"]
    varied = [part for part in parts if len({part(t) for t in tickets}) > 1]
    return [(t, "-".join([sweep.name, *(part(t) for part in varied)])) for t in tickets]


def level_studies(sweep: SweepConfig) -> list[LevelStudy]:
    return [LevelStudy(t, level, prefix, prefix[len(sweep.name) + 1:])
            for t, prefix in study_prefixes(sweep) for level in sweep.spend_levels]


def optuna_space(sweep: SweepConfig) -> dict[str, Any]:
    """`SweepConfig.optuna_space` as Optuna categorical distributions over the flat tweak keys
    that `trainables.common.tweaks_from_trial` reads."""
    from optuna.distributions import CategoricalDistribution

    space = sweep.optuna_space
    return {t.name: CategoricalDistribution(list(getattr(space, t.name))) for t in REGISTRY}


def check_space(sweep: SweepConfig) -> None:
    """Every choice of the space, and every pair of choices of two tweaks, must make a valid spend of
    every ticket (a rewind epoch the draw keeps; reinit, which has no rewind point, never with one):
    refused at plan time rather than failing in a trial. Pairs cover what tweaks check against each
    other (`Tweak.check_spend`); the level changes nothing a tweak accepts, so one level is tried."""
    from lth_core.config import ConfigError

    space = sweep.optuna_space
    names = [t.name for t in REGISTRY]
    for ticket, prefix in study_prefixes(sweep):
        study = LevelStudy(ticket, sweep.spend_levels[0], prefix)
        for name in names:
            for value in getattr(space, name):
                try:
                    spend_for(sweep, study, {name: value})
                except ValueError as e:  # a ConfigError, or an unreadable "ALPHA,T"
                    raise ConfigError(f"optuna_space.{name}", f"{value!r}: {e}") from None
        for first, second in itertools.combinations(names, 2):
            for a, b in itertools.product(getattr(space, first), getattr(space, second)):
                try:
                    spend_for(sweep, study, {first: a, second: b})
                except ValueError as e:
                    raise ConfigError(f"optuna_space.{first}", f"{a!r} cannot go with {second} {b!r} ({e}); "
                                      "take one of the two out of the space", (f"optuna_space.{second}",)) from None


def trial_fixed(sweep: SweepConfig, study: LevelStudy, parent_run_id: str | None) -> dict[str, Any]:
    """A trial's config except the searched tweak keys."""
    return {**trial_base(sweep, parent_run_id), "ticket": to_dict(study.ticket), "level": study.level,
            "seed": sweep.seeds[0]}


def spend_for(sweep: SweepConfig, study: LevelStudy, params: dict[str, Any]) -> SpendConfig:
    from trainables.common import spend_from_trial

    return spend_from_trial({**trial_fixed(sweep, study, None), **params})


def vanilla_key(sweep: SweepConfig, study: LevelStudy) -> str:
    """What a study's trials are comparable on: ticket, level, recipe and seed (the vanilla spend's key)."""
    return SpendConfig(ticket=study.ticket, level=study.level, recipe=sweep.spend_recipe, tweaks=TweakConfig(),
                       seed=sweep.seeds[0]).key


def open_storage(url: str) -> Any:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    prefix = "sqlite:///"
    kwargs = None
    if url.startswith(prefix):
        Path(url[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as e:  # a bad URL, a missing driver, an unreachable server
        raise runner.SweepError(f"cannot open the Optuna storage {redact(url)}: {e}") from None


def open_study(sweep: SweepConfig, study: LevelStudy, storage: Any, space: dict[str, Any]) -> Any:
    """Create or load the level's study, check it was searched for the same thing, tag it."""
    import optuna

    ot_study = optuna.create_study(study_name=study.study_name, storage=storage, direction="maximize",
                                   load_if_exists=True)
    where = f"study {study.study_name!r} in {redact(sweep.optuna_storage)}"
    if ot_study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise runner.SweepError(f"{where} minimises; it was not made by this search. Use another --name.")
    key = vanilla_key(sweep, study)
    attrs = ot_study.user_attrs
    if attrs.get("vanilla_spend_key", key) != key:
        raise runner.SweepError(
            f"{where} was searched for another ticket, level, recipe or seed (vanilla spend "
            f"{attrs['vanilla_spend_key']}, this sweep's is {key}); use another --name or --optuna-storage")
    for trial in ot_study.trials:
        changed = sorted(n for n, dist in trial.distributions.items() if space.get(n) != dist)
        if changed:
            raise runner.SweepError(
                f"{where} was searched over another space (differs in {', '.join(changed)}: trial "
                f"{trial.number} has {changed[0]} {trial.distributions[changed[0]]}); use another --name "
                "or --optuna-storage")
    sparsity = study.ticket.pruning.level_sparsities()[study.level - 1] if study.level else 0.0
    for name, value in {"sweep_name": sweep.name, "level": study.level, "ticket_key": study.ticket.key,
                        "sparsity": round(sparsity, 6), "vanilla_spend_key": key, "metric": METRIC}.items():
        if attrs.get(name) != value:
            ot_study.set_user_attr(name, value)
    return ot_study


def _completed(ot_study: Any) -> int:
    import optuna

    return len(ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _experiment_path(sweep: SweepConfig, name: str) -> str:
    return f"{sweep.results_dir.rstrip('/')}/{name}"


def _can_restore(sweep: SweepConfig, name: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(_experiment_path(sweep, name))


def _set_run_done(ot_study: Any, name: str) -> None:
    runs = [dict(r) for r in ot_study.user_attrs.get(RUNS_ATTR, [])]
    for r in runs:
        if r["experiment"] == name:
            r["done"] = True
    ot_study.set_user_attr(RUNS_ATTR, runs)


def _fail_orphans(ot_study: Any) -> int:
    """Trials a killed invocation left RUNNING (and that no restore will finish) are marked FAIL,
    so that TPE's constant liar stops counting them."""
    import optuna

    orphans = ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in orphans:
        ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def _check_finished(ot_study: Any, results: Any, name: str, trials: int) -> None:
    """`Tuner.fit` returns normally when it is interrupted (Ctrl+C, SIGUSR1), and the trials it stopped
    may read TERMINATED in the results: an interrupted experiment is one that created fewer trials
    than asked, or left an Optuna trial RUNNING (OptunaSearch tells every trial that finishes).
    Stop the sweep there, leaving the experiment unmarked so that the next invocation restores it."""
    import optuna

    running = ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if len(results) < trials or running:
        raise runner.SweepError(f"{name} was stopped before its {trials} trials finished ({_completed(ot_study)} "
                                f"complete in study {ot_study.study_name!r}); rerun the same command to resume it")


def sampler_seed(sweep: SweepConfig, study: LevelStudy, run_index: int) -> int:
    return (sweep.seeds[0] * 1_000_003 + study.ticket.seed * 7_919 + study.level * 101 + run_index) % (2**31 - 1)


def search_level(sweep: SweepConfig, study: LevelStudy, storage: Any, space: dict[str, Any],
                 parent_run_id: str) -> int:
    """Bring one study to `sweep.optuna_trials` completed trials; returns how many trials Tune ran anew."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from trainables.spend import spend_trainable

    ot_study = open_study(sweep, study, storage, space)
    target = sweep.optuna_trials
    fixed = trial_fixed(sweep, study, parent_run_id)
    before = len(ot_study.trials)

    # 1. finish what an interrupted invocation started
    for run in ot_study.user_attrs.get(RUNS_ATTR, []):
        if _completed(ot_study) >= target:
            break
        if run.get("done") or not _can_restore(sweep, run["experiment"]):
            continue
        print(f"{study.study_name}: {_completed(ot_study)}/{target} trials complete; resuming the stopped "
              f"experiment {run['experiment']}", file=sys.stderr)
        results = runner.run_tuner(run["experiment"], spend_trainable, sweep, fixed,
                                   expected_trials=run["trials"])
        _check_finished(ot_study, results, run["experiment"], run["trials"])
        _set_run_done(ot_study, run["experiment"])

    # 2. one new experiment for the remainder
    done = _completed(ot_study)
    if done < target:
        orphans = _fail_orphans(ot_study)
        runs = [dict(r) for r in ot_study.user_attrs.get(RUNS_ATTR, [])]
        for r in runs:  # unfinished and not restorable (its Tune experiment is gone): given up
            if not r.get("done"):
                r.update(done=True, abandoned=True)
        used = {r["experiment"] for r in runs}
        index = len(runs)
        name = study.experiment_base if index == 0 else f"{study.experiment_base}-run{index}"
        while name in used or _can_restore(sweep, name):  # never restore a finished experiment by accident
            index += 1
            name = f"{study.experiment_base}-run{index}"
        seed = sampler_seed(sweep, study, index)
        runs.append({"experiment": name, "trials": target - done, "target": target, "sampler_seed": seed,
                     "done": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        ot_study.set_user_attr(RUNS_ATTR, runs)
        print(f"{study.study_name}: {done}/{target} trials complete"
              + (f" ({orphans} orphaned RUNNING trial(s) marked FAIL)" if orphans else "")
              + f"; running {target - done} more in {name}", file=sys.stderr)
        searcher = OptunaSearch(space=space, metric=METRIC, mode=MODE, study_name=study.study_name,
                                storage=storage, sampler=optuna.samplers.TPESampler(seed=seed))
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=target - done, metric=METRIC, mode=MODE,
                                      max_concurrent_trials=sweep.max_concurrent or None, reuse_actors=True)
        results = runner.run_tuner(name, spend_trainable, sweep, fixed, tune_config, expected_trials=target - done)
        _check_finished(ot_study, results, name, target - done)
        _set_run_done(ot_study, name)
    else:
        print(f"{study.study_name}: {done}/{target} trials complete", file=sys.stderr)
    return len(ot_study.trials) - before


def _read_json(sweep: SweepConfig, path: str) -> Any | None:
    """An artifact of the store, or None when it is missing or unreadable (the table shows '-')."""
    from lth_core.store import ArtifactStore, CorruptArtifactError

    try:
        return ArtifactStore(sweep.store).read_json(path)
    except (FileNotFoundError, CorruptArtifactError, ValueError):
        return None


def _draw_level(sweep: SweepConfig, study: LevelStudy) -> dict[str, Any] | None:
    from lth_core.paths import ticket_summary

    summary = _read_json(sweep, ticket_summary(study.ticket.key))
    if summary is None:
        return None
    return next((lv for lv in summary.get("levels", []) if lv["level"] == study.level), None)


def _vanilla_test_acc(sweep: SweepConfig, study: LevelStudy, draw_level: dict[str, Any] | None) -> float | None:
    """Vanilla LTH at the study's level: the draw's own re-training of the level (IMP, OMP); a mask
    drawn at initialisation trains nothing to draw, so there it is the vanilla spend when the store
    holds one (a trial of the search, or the grid), else unknown."""
    if draw_level is not None and "test_acc" in draw_level:
        return draw_level["test_acc"]
    result = _spend_result(sweep, spend_for(sweep, study, {}))
    return result["test_acc"] if result else None


def _spend_result(sweep: SweepConfig, spend: SpendConfig) -> dict[str, Any] | None:
    from lth_core.paths import spend_result

    return _read_json(sweep, spend_result(spend.key))


def best_of(sweep: SweepConfig, study: LevelStudy, storage: Any) -> dict[str, Any]:
    """The level's best trial (over every invocation) with its test and the vanilla accuracy."""
    import optuna

    ot_study = optuna.load_study(study_name=study.study_name, storage=storage)
    complete = _completed(ot_study)
    draw_level = _draw_level(sweep, study)
    sparsity = draw_level["sparsity"] if draw_level else (
        study.ticket.pruning.level_sparsities()[study.level - 1] if study.level else 0.0)
    entry: dict[str, Any] = {"level": study.level, "sparsity": sparsity, "study": study.study_name,
                             "ticket_key": study.ticket.key, "ticket_seed": study.ticket.seed,
                             "ticket": study.ticket_label,
                             "trials": len(ot_study.trials), "complete": complete, "best_trial": None,
                             "params": None, "tweak": None,
                             "values": {"best_val_acc": None, "test_acc": None,
                                        "vanilla_test_acc": _vanilla_test_acc(sweep, study, draw_level)}}
    if not complete:
        return entry
    best = ot_study.best_trial
    spend = spend_for(sweep, study, best.params)
    result = _spend_result(sweep, spend)
    entry.update(best_trial=best.number, params=dict(best.params), tweak=spend.tweaks.describe(),
                 spend_key=spend.key)
    entry["values"].update(best_val_acc=best.value, test_acc=result["test_acc"] if result else None)
    return entry


def _pct(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else "-"


def best_table(entries: list[dict[str, Any]]) -> str:
    """One row per study; a first column names the ticket when there are several (its mask source,
    its seed)."""
    with_ticket = any(e["ticket"] for e in entries)
    rows = [(*((e["ticket"],) if with_ticket else ()), str(e["level"]), _pct(e["sparsity"]),
             e["tweak"] or "-", _pct(e["values"]["best_val_acc"]), _pct(e["values"]["test_acc"]),
             _pct(e["values"]["vanilla_test_acc"]), f"{e['complete']}/{e['trials']}") for e in entries]
    header = (*(("ticket",) if with_ticket else ()), "level", "sparsity", "best tweaks", "val acc", "test acc",
              "vanilla test", "trials")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    text_cols = {header.index("best tweaks"), *((0,) if with_ticket else ())}

    def fmt(row) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(f"{c:<{w}}" if i in text_cols else f"{c:>{w}}" for i, (c, w) in enumerate(cells))

    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def log_best(sweep: SweepConfig, parent_run_id: str, entries: list[dict[str, Any]]) -> None:
    """The best combination per level on the parent run (`tracking.runs.log_optuna_best`)."""
    from tracking.runs import log_optuna_best

    log_optuna_best(sweep.tracking_uri, parent_run_id,
                    [(e["level"], e["ticket"] or None, e["values"]["best_val_acc"],
                      e["values"]["test_acc"]) for e in entries],
                    {"sweep": sweep.name, "metric": METRIC, "mode": MODE,
                     "study_prefixes": sorted({p for _, p in study_prefixes(sweep)}), "levels": entries})


def plan(sweep: SweepConfig) -> str:
    studies = level_studies(sweep)
    space = sweep.optuna_space
    lines = [runner.plan_text(sweep, len(studies) * sweep.optuna_trials, layout.KIND_OPTUNA),
             (f"  optuna:  TPE, {sweep.optuna_trials} completed trial(s) per level, maximising {METRIC} "
              f"(re-training seed {sweep.seeds[0]})"),
             f"  studies: {', '.join(s.study_name for s in studies)}",
             f"  storage: {redact(sweep.optuna_storage)}",
             "  space:   " + "; ".join(f"{t.name} " + "|".join(str(v) for v in getattr(space, t.name))
                                   for t in REGISTRY)]
    if sweep.asha:
        lines.append("  note:    --asha is for the grid; every Optuna trial runs to its last epoch")
    if len(sweep.seeds) > 1:
        lines.append(f"  note:    the search re-trains with seed {sweep.seeds[0]} only")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sweep = sweep_from_args(args)
    check_space(sweep)
    print(plan(sweep), file=sys.stderr)
    if args.dry_run:
        return 0
    preflight.check(sweep, optuna=True)  # before Ray starts: nothing runs on a bad input
    runner.start_logs(sweep)  # Ray's and MLflow's own output goes to the sweep's log file
    storage = open_storage(sweep.optuna_storage)
    space = optuna_space(sweep)
    studies = level_studies(sweep)
    prefixes = study_prefixes(sweep)
    extra_tags = {layout.OPTUNA_STORAGE: redact(sweep.optuna_storage), layout.OPTUNA_STUDY_PREFIX: prefixes[0][1]}
    if len(prefixes) > 1:
        extra_tags[layout.OPTUNA_STUDY_PREFIXES] = ",".join(p for _, p in prefixes)
    new_trials = 0
    with runner.sweep_session(sweep, args.preset, layout.KIND_OPTUNA, extra_tags) as parent:
        runner.draw_stage(sweep, parent)
        for study in studies:
            new_trials += search_level(sweep, study, storage, space, parent)
        entries = [best_of(sweep, study, storage) for study in studies]
        log_best(sweep, parent, entries)
    print(best_table(entries))
    print(f"\noptuna search {sweep.name!r} finished in {runner.elapsed(started)}: {new_trials} new trial(s) in "
          f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} ({redact(sweep.optuna_storage)}).\n"
          f"MLflow UI: {runner.mlflow_ui_hint(sweep, parent)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return runner.cli_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
