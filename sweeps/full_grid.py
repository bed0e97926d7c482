"""The tweak grid x sparsity levels x seeds, on Ray Tune, tracked in MLflow.

Stage 1 draws every distinct ticket once; stage 2 spends the grid, every trial
reading the same stored ticket. Locally: `python sweeps/full_grid.py` (Ray
in-process). On a cluster: `ray job submit --working-dir . -- python
sweeps/full_grid.py --preset paper --store s3://... --tracking-uri http://...`.
Rerun the same command to resume a stopped sweep.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lth_core import paths  # noqa: E402
from lth_core.config import to_dict  # noqa: E402
from lth_core.store import ArtifactStore  # noqa: E402
from sweeps import preflight, runner  # noqa: E402
from sweeps.config import SweepConfig, add_arguments, sweep_from_args, trial_base  # noqa: E402
from tracking.layout import KIND_GRID  # noqa: E402


def spend_space(sweep: SweepConfig, parent_run_id: str | None) -> dict:
    from ray import tune

    return {**trial_base(sweep, parent_run_id),
            "ticket": tune.grid_search([to_dict(t) for t in sweep.tickets()]),
            "level": tune.grid_search(list(sweep.spend_levels)),
            "tweaks": tune.grid_search([to_dict(c) for c in sweep.combos]),
            "seed": tune.grid_search(list(sweep.seeds))}


def summary_table(sweep: SweepConfig, store: ArtifactStore) -> str:
    """Mean test accuracy per tweak (rows; per mask source and tweak when the sweep has several
    sources) and level (columns), from the stored results: the numbers of the weights each spend
    ended with (after any tweak that replaces them at the end, as SWA does). A combination ASHA
    stopped in every seed shows '-'."""
    from collections import defaultdict

    several = len({t.pruning.method for t in sweep.tickets()}) > 1
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for spend in sweep.spends():
        path = paths.spend_result(spend.key)
        row = f"{spend.ticket.pruning.method}: " * several + spend.tweaks.describe()
        cell = cells[(row, spend.level)]
        if store.exists(path):
            cell.append(store.read_json(path)["test_acc"])
    levels = sorted({lv for _, lv in cells})
    tweaks = list(dict.fromkeys(t for t, _ in cells))  # the grid's order: sources, then combos
    width = max(len(t) for t in tweaks)
    lines = [f"{'test acc':<{width}}  " + "  ".join(f"{'L' + str(lv):>7}" for lv in levels)]
    for t in tweaks:
        row = [sum(cells[(t, lv)]) / len(cells[(t, lv)]) if cells[(t, lv)] else None for lv in levels]
        lines.append(f"{t:<{width}}  " + "  ".join(f"{v:>7.2%}" if v is not None else f"{'-':>7}" for v in row))
    return "\n".join(lines)


def draw_lines(summaries: list[dict], levels: Sequence[int]) -> list[str]:
    """The draws in a few lines: each trained ticket's dense and vanilla LTH test accuracies at
    the sweep's levels (`format_levels` is the full table); the tickets drawn at initialisation,
    which trained nothing, one line per source with their sparsities."""
    lines, at_init = [], {}
    for summary in summaries:
        method = summary["config"].get("pruning", {}).get("method", "imp")
        seed = summary["config"].get("seed", 0)
        chosen = [lv for lv in summary["levels"] if lv["level"] in levels]
        if summary.get("dense") is None:
            at_init.setdefault(method, (chosen, []))[1].append(str(seed))
            continue
        lines.append(f"ticket {summary['key']} ({method}, seed {seed}): dense {summary['dense']['test_acc']:.2%}, "
                     "vanilla LTH " + " ".join(f"L{lv['level']} {lv['test_acc']:.2%}" for lv in chosen))
    for method, (chosen, seeds) in at_init.items():
        lines.append(f"{method} masks at initialisation (seed {', '.join(seeds)}): "
                     + " ".join(f"L{lv['level']} {lv['sparsity']:.1%}" for lv in chosen) + " sparse")
    return lines


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sweep = sweep_from_args(args)
    trials = len(sweep.spends())
    print(runner.plan_text(sweep, trials, KIND_GRID), file=sys.stderr)
    if args.dry_run:
        return 0
    preflight.check(sweep)  # before Ray starts: nothing runs on a bad input
    runner.start_logs(sweep)  # Ray's and MLflow's own output goes to the sweep's log file
    with runner.sweep_session(sweep, args.preset, KIND_GRID) as parent:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        from trainables.spend import spend_trainable

        runner.draw_stage(sweep, parent)
        scheduler = (ASHAScheduler(time_attr="epoch", grace_period=sweep.asha_grace_epochs,
                                   max_t=(sweep.spend_recipe or sweep.ticket.recipe).epochs)
                     if sweep.asha else None)
        tune_config = tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler,
                                      max_concurrent_trials=sweep.max_concurrent or None, reuse_actors=True)
        space = spend_space(sweep, parent)
        name = runner.experiment_name(f"{sweep.name}-spends", space)
        runner.run_tuner(name, spend_trainable, sweep, space, tune_config, expected_trials=trials)
        if not sweep.asha:  # ASHA stops trials on purpose
            runner.require_stored(sweep, [paths.spend_result(s.key) for s in sweep.spends()], name)
    store = ArtifactStore(sweep.store)
    print()  # the tables on stdout, after the trial lines on stderr
    summaries = [store.read_json(paths.ticket_summary(t.key)) for t in sweep.tickets()]
    print("\n".join(draw_lines(summaries, sweep.spend_levels)))
    print(f"(per-level tables: python -m lth_core show --key KEY --store {sweep.store})\n")
    print(summary_table(sweep, store))
    print(f"\nsweep {sweep.name!r} finished in {runner.elapsed(started)}: {trials} trials.\n"
          f"MLflow UI: {runner.mlflow_ui_hint(sweep, parent)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return runner.cli_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
