"""`python -m lth_core draw|spend|show|analyze|verify|tweaks|masks`: the core without Ray or MLflow.

Each command takes a config file (JSON or YAML), flags, or both (flags win),
shows progress on stderr and prints a JSON summary on stdout.

Every input is checked before any work starts (config, device, data files, store); a
problem ends the command with one line on stderr, `error: <what is wrong>; <what to
do>`, and exit status 2. Tracebacks are shown only with `--debug` or `LTH_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from lth_core import paths
from lth_core.config import (ConfigError, SpendConfig, TicketConfig, from_dict, read_mapping, recipe_overlay,
                             replace)
from lth_core.flags import FlagTable, add_flags, deep_merge, overrides, tweak_flags
from lth_core.inputs import (EXIT_USER_ERROR, InputError, Parser, check_spend, check_ticket, first_line, local_folder,
                             open_store, probe_store, shown_uri)
from lth_core.mask_sources import SOURCES
from lth_core.tables import StageProgress, dead_weights_warning, format_levels, weights_line

DEFAULT_STORE = "artifacts"

# flag -> (dotted field inside a TicketConfig, kind, help); kinds: lth_core.flags
TICKET_FLAGS: FlagTable = {
    "--dataset": ("data.name", str, "digits | mnist | fashion-mnist | cifar10 | cifar100 | tinyimagenet"),
    "--data-root": ("data.root", str, "folder holding the data set's files (fashion-mnist: "
                                      "/usr/share/datasets/fashion-mnist when not set)"),
    "--val-fraction": ("data.val_fraction", float, "share of the training set held out for validation"),
    "--train-size": ("data.train_size", int, "train on a seeded, stratified subset of this many images (0 = all)"),
    "--test-size": ("data.test_size", int, "test on a fixed, stratified subset of this many images (0 = all)"),
    "--arch": ("model.arch", str, "resnet18 | resnet34 | vgg16 | mobilenet"),
    "--width": ("model.width", float, "width multiplier"),
    "--seed": ("seed", int, "seed of the initialisation and data order"),
    "--epochs": ("recipe.epochs", int, "epochs of the dense run and of each IMP level"),
    "--batch-size": ("recipe.batch_size", int, "mini-batch size"),
    "--lr": ("recipe.lr", float, "SGD learning rate"),
    "--momentum": ("recipe.momentum", float, "SGD momentum"),
    "--weight-decay": ("recipe.weight_decay", float, "weight decay"),
    "--milestones": ("recipe.milestones", "ints", "epochs where the lr drops x0.1 (default 50%%,75%%)"),
    "--device": ("recipe.device", str, "auto | cpu | cuda"),
    "--precision": ("recipe.precision", str, "auto | fp32 | bf16"),
    "--graphs": ("recipe.graphs", str, "auto | on | off: replay each step as a CUDA graph (auto: on for CUDA)"),
    "--prune-method": ("pruning.method", str, "mask source: " + " | ".join(SOURCES)),
    "--prune-rate": ("pruning.rate", float, "share of remaining weights removed per IMP level"),
    "--num-levels": ("pruning.levels", int, "number of pruning levels to draw"),
    "--sparsities": ("pruning.sparsities", "floats", "OMP target sparsities, comma separated"),
    "--scope": ("pruning.scope", str, "global | layerwise"),
    "--imp-rewind-epoch": ("pruning.rewind_epoch", int, "epoch IMP rewinds the survivors to (0 = init)"),
    "--keep-epochs": ("keep_epochs", "ints", "dense-run epochs kept as rewind points, comma separated"),
}

SPEND_FLAGS: FlagTable = {
    "--level": ("level", int, "pruning level to spend (0 = the dense net)"),
    "--spend-seed": ("seed", int, "seed of the re-training"),
    "--spend-epochs": ("recipe.epochs", int, "re-training epochs; the rest of the recipe stays the ticket's "
                                             "(default: the ticket's epochs)"),
    "--snapshot-epochs": ("snapshot_epochs", "ints", "epochs after which the weights are kept besides the final "
                                                     "ones (0 = the start), comma separated; for analyze --epoch"),
    **tweak_flags(),
}

# Spellings that meant something else once: flag -> what to write instead.
RENAMED = {"--levels": "--num-levels N for the number of IMP levels to draw (the sweeps' --levels picks the "
                       "levels to spend; here that is --level K)"}


def _from_file(args: argparse.Namespace) -> dict[str, Any]:
    return read_mapping(args.config) if args.config else {}


def ticket_from_args(args: argparse.Namespace) -> TicketConfig:
    return from_dict(TicketConfig, deep_merge(_from_file(args), overrides(args, TICKET_FLAGS)))


def spend_from_args(args: argparse.Namespace) -> SpendConfig:
    data = deep_merge(_from_file(args), overrides(args, TICKET_FLAGS, "ticket."))
    data = deep_merge(data, overrides(args, SPEND_FLAGS))
    if isinstance(data.get("recipe"), dict):
        data["recipe"] = recipe_overlay(from_dict(TicketConfig, data.get("ticket")).recipe, data["recipe"])
    return from_dict(SpendConfig, data)


# ------------------------------------------------------------------ checks before any work


def _stages(ticket: TicketConfig) -> str:
    e, n = ticket.recipe.epochs, ticket.num_levels
    if ticket.pruning.source.at_init:
        return f"{n} {ticket.pruning.method} mask(s) scored at initialisation, no training"
    return (f"dense run ({e} epochs), then {n} {ticket.pruning.method.upper()} level(s) "
            f"({e} epochs each{ticket.pruning.retrain_text}) = {(n + 1) * e} epochs")


def draw_plan(ticket: TicketConfig, store: Any) -> str:
    """What a draw will do; its live weights (`lth_core.live`) are counted from the data's shape."""
    from lth_core.data import load_dataset
    from lth_core.live import weight_counts
    from lth_core.lottery import live_set

    drawn = store.exists(paths.ticket_summary(ticket.key))
    sparsities = ticket.pruning.level_sparsities()
    dataset = load_dataset(ticket.data)  # read and checked already (check_ticket): cached
    live = live_set(ticket, dataset)
    weights = weight_counts(live)
    warning = dead_weights_warning(weights, dataset.image_size)
    lines = [f"draw: ticket {ticket.key} ({ticket.model.arch} x{ticket.model.width:g} on {ticket.data.name}, "
             f"seed {ticket.seed}, device {ticket.recipe.device})",
             f"  stages: {_stages(ticket)}"
             + ("; already drawn: its files are checked and read back" if drawn else ""),
             f"  levels: sparsity {', '.join(f'{s:.1%}' for s in sparsities)}",
             f"  weights: {weights_line(weights)}",
             *([f"  {warning}"] if warning else []),
             f"  writes: {shown_uri(store.uri)}/{paths.ticket_dir(ticket.key)}"]
    return "\n".join(lines)


def spend_plan(config: SpendConfig, store: Any) -> str:
    from lth_core.lottery import RESULT_SHAPE, missing_snapshots, read_json_checked
    from lth_core.store import CorruptArtifactError

    ticket = config.ticket
    drawn = store.exists(paths.ticket_summary(ticket.key))
    train = f"re-train {config.train_recipe.epochs} epochs on {config.train_recipe.device}"
    try:
        result = read_json_checked(store, paths.spend_result(config.key), RESULT_SHAPE)
        lacking = missing_snapshots(config, result)
        spent = ("already spent: read back" if not lacking else
                 f"spent without its weights at epoch(s) {', '.join(map(str, lacking))}: {train} to keep them")
    except (FileNotFoundError, CorruptArtifactError, ValueError):
        spent = train
    kept = (f"; keeps the weights at epoch(s) {', '.join(map(str, config.snapshot_epochs))}"
            if config.snapshot_epochs else "")
    lines = [f"spend: level {config.level} ({config.sparsity:.1%} sparse) of ticket {ticket.key} with "
             f"{config.tweaks.describe()}, seed {config.seed}",
             "  draw:   " + ("in the store" if drawn else f"not in the store: drawn first, {_stages(ticket)}"),
             "  spend:  " + spent + kept,
             f"  writes: {shown_uri(store.uri)}/{paths.spend_dir(config.key)}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ commands


def cmd_draw(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.lottery import draw

    ticket = ticket_from_args(args)
    check_ticket(ticket)
    store = open_store(args.store)
    print(draw_plan(ticket, store), file=sys.stderr)
    progress = StageProgress(default_epochs=ticket.recipe.epochs)
    try:
        summary = draw(ticket, store, progress)
    finally:
        progress.close()
    print(format_levels(summary), file=sys.stderr)
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _spend_checked(args: argparse.Namespace, epoch: int | None = None) -> tuple[SpendConfig, Any]:
    """The spend the flags name (keeping its weights at `epoch` too), its inputs checked, the plan shown."""
    config = spend_from_args(args)
    if epoch is not None:
        last = config.train_recipe.epochs
        if not 0 <= epoch <= last:
            raise InputError(f"--epoch {epoch} is not an epoch of the spend (it trains {last}); pass --epoch between 0 "
                           f"(its starting weights) and {last}, or leave it out for the final weights")
        config = replace(config, snapshot_epochs=(*config.snapshot_epochs, epoch))
    check_spend(config)
    store = open_store(args.store)
    print(spend_plan(config, store), file=sys.stderr)
    return config, store


def cmd_spend(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.lottery import spend

    config, store = _spend_checked(args)
    progress = StageProgress({f"spend level {config.level}": config.train_recipe.epochs},
                             default_epochs=config.ticket.recipe.epochs)
    try:
        result = spend(config, store, on_stage_epoch=progress)
    finally:
        progress.close()
    result = {k: v for k, v in result.items() if k != "history"}
    live = f", {result['live_sparsity']:.2%} of live weights" if "live_sparsity" in result else ""
    print(f"spent level {result['level']} ({result['sparsity']:.2%} sparse{live}) with {result['tweak']}: "
          f"test acc {_pct(result['test_acc'])} (vanilla {_pct(result.get('vanilla_test_acc'))}, "
          f"dense {_pct(result.get('dense_test_acc'))})", file=sys.stderr)
    return result


def cmd_show(args: argparse.Namespace) -> dict[str, Any]:
    key = args.key or ticket_from_args(args).key
    try:
        path = paths.ticket_summary(key)
    except ValueError as e:
        raise InputError(f"--key: {e}; pass the key a draw printed (`ticket <key>` in its table)") from None
    store = open_store(args.store, write=False)
    if not store.exists(path):
        raise InputError(f"no finished draw with key {key} in {shown_uri(store.uri)}; run `python -m lth_core draw` "
                         "with the same settings first, or pass the --store it wrote to")
    from lth_core.lottery import read_draw

    summary, problems = read_draw(key, store)
    if problems:
        raise InputError(f"the draw {key} in {shown_uri(store.uri)} has missing or corrupt files "
                         f"({', '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}); run "
                         "`python -m lth_core draw` with its settings to recompute them")
    print(format_levels(summary), file=sys.stderr)
    return summary


def check_analyze_args(args: argparse.Namespace) -> tuple[str, ...]:
    from lth_core.tweaks.activations import ACTIVATIONS

    for flag, value in (("--grid", args.grid), ("--batches", args.batches), ("--top-k", args.top_k)):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}; pass {flag} 1 or more")
    if not 0 <= args.threshold < float("inf"):  # NaN fails this too
        raise InputError(f"--threshold must be a finite number >= 0, got {args.threshold:g}; pass a small positive "
                         "number such as 1e-3")
    names = tuple(n.strip() for n in args.compare_activations.split(",") if n.strip())
    unknown = [n for n in names if n not in ACTIVATIONS]
    if not names or unknown:
        raise InputError(f"--compare-activations: {'unknown activation ' + repr(unknown[0]) if unknown else 'empty'}; "
                         f"pass a comma-separated list of {', '.join(ACTIVATIONS)}")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file; pass a folder for the plots and arrays")
    return names


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.analysis.run import analyze_spend

    activations = check_analyze_args(args)
    config, store = _spend_checked(args, args.epoch)
    out = Path(args.out or f"analysis/{config.key}" + (f"-epoch{args.epoch}" if args.epoch is not None else ""))
    progress = StageProgress(default_epochs=config.train_recipe.epochs)
    try:
        result = analyze_spend(config, store, out, epoch=args.epoch, activations=activations,
                               threshold=args.threshold, top_k=args.top_k, grid=args.grid, batches=args.batches,
                               on_stage_epoch=progress)
    finally:
        progress.close()
    print(result["table"], file=sys.stderr)
    weights = "final weights" if args.epoch is None else f"weights after epoch {args.epoch}"
    print(f"{weights}: eigenvalues {result['hessian']['eigenvalues']}; plots and arrays in {out}", file=sys.stderr)
    return {k: v for k, v in result.items() if k != "table"}


def cmd_verify(args: argparse.Namespace) -> int:
    """Every finding on stdout, one line each; exit 0 when the store is sound (after a repair: when
    the repaired store, scanned again, is), 1 when not. A store that is not there, or a folder
    without the store's layout, is refused before anything is read or deleted."""
    from lth_core.verify import FAULTS, NotAStoreError, repair, report, scan

    store = open_store(args.store, write=False)
    try:
        findings = scan(store)
    except NotAStoreError as e:
        via = f" (--store {args.store} is a link to it)" if local_folder(args.store).is_symlink() else ""
        raise InputError(f"{e}{via}; pass --store with the folder draws and spends write to "
                         "(nothing was changed)") from None
    if args.repair:
        probe_store(args.store)  # a store that takes no writes is named here, not half-way through
    repaired = repair(store, findings) if args.repair else []
    after = scan(store) if args.repair else None
    print(report(findings, repaired, after))
    return 1 if any(f.kind in FAULTS for f in (findings if after is None else after)) else 0


def cmd_masks(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.mask_sources import REGISTRY, docs_table

    print(docs_table(), file=sys.stderr)
    return {s.name: {"summary": s.summary, "scores": s.weights, "reference": s.reference} for s in REGISTRY}


def cmd_tweaks(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.tweaks import REGISTRY, docs_table

    print(docs_table(), file=sys.stderr)
    return {t.name: {"summary": t.summary, "hooks": list(t.hooks()), "search": list(t.search)} for t in REGISTRY}


# ------------------------------------------------------------------ parser and errors


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m lth_core", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the traceback of an error (also: LTH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="JSON or YAML config file (flags override it)")
        p.add_argument("--store", default=os.environ.get("LTH_STORE_URI", DEFAULT_STORE),
                       help="artifact store: a folder or a pyarrow URI such as s3://bucket/prefix "
                            "(default: $LTH_STORE_URI or ./artifacts)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error (also: LTH_DEBUG=1)")

    def ticket_flags(p: argparse.ArgumentParser) -> None:
        add_flags(p, TICKET_FLAGS, defaults=TicketConfig())
        for old in RENAMED:
            p.add_argument(old, dest="renamed_" + old.strip("-").replace("-", "_"), default=None,
                           help=argparse.SUPPRESS)

    p = sub.add_parser("draw", help="train the dense net and draw every pruning level (cached)")
    common(p)
    ticket_flags(p)
    p.set_defaults(run=cmd_draw)

    p = sub.add_parser("spend", help="re-train one level of a ticket with tweaks (draws it first if needed)")
    common(p)
    ticket_flags(p)
    add_flags(p, SPEND_FLAGS, defaults=SpendConfig())
    p.set_defaults(run=cmd_spend)

    p = sub.add_parser("show", help="print the per-level table of a stored draw")
    common(p)
    p.add_argument("--key", help="ticket key (instead of ticket flags)")
    ticket_flags(p)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("analyze", help="activation sparsity, Hessian eigenvalues and loss landscape of a spend")
    common(p)
    ticket_flags(p)
    add_flags(p, SPEND_FLAGS, defaults=SpendConfig())
    p.add_argument("--out", help="output folder (default: analysis/<spend key>, with --epoch K "
                                 "analysis/<spend key>-epochK)")
    p.add_argument("--epoch", type=int, default=None,
                   help="analyse the weights after this epoch of the spend (0 = its start) instead of the final "
                        "ones; a stored spend without them is trained again to keep them")
    p.add_argument("--compare-activations", default="relu,swish",
                   help="activations to compare in the sparsity table, comma separated (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=1e-3,
                   help="|a| below which an activation counts as zero (default: %(default)g)")
    p.add_argument("--top-k", type=int, default=1, help="number of top Hessian eigenvalues (default: %(default)s)")
    p.add_argument("--grid", type=int, default=11, help="points per axis of the loss landscape (default: %(default)s)")
    p.add_argument("--batches", type=int, default=4,
                   help="train batches for the Hessian and landscape, test batches for activations "
                        "(default: %(default)s)")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("verify", help="check every artifact of a store: corrupt, missing, orphaned (exit 1 if any)")
    common(p)
    p.add_argument("--repair", action="store_true",
                   help="remove what is corrupt or left over, so the next draw or spend recomputes it; "
                        "only files of the store's layout are removed (run it while nothing writes to the store)")
    p.set_defaults(run=cmd_verify)

    for name, run, text in (("tweaks", cmd_tweaks, "the registered re-training tweaks: flags, values, labels, hooks"),
                            ("masks", cmd_masks, "the registered mask sources: what they score, their references")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(run=run)
    return parser


def _flag_of(field_path: str, command: str | None) -> str | None:
    """The flag that sets a config field (None when no flag does)."""
    tables: list[tuple[FlagTable, str]] = [(TICKET_FLAGS, "")]
    if command in ("spend", "analyze"):
        tables = [(SPEND_FLAGS, ""), (TICKET_FLAGS, "ticket."), (TICKET_FLAGS, "")]
    for table, prefix in tables:
        for flag, (dotted, _, _) in table.items():
            if field_path == prefix + dotted:
                return flag
    return None


def config_error_text(e: ConfigError, command: str | None, config_file: str | None) -> str:
    """`<field>: <what is wrong>; <what to do>` for a configuration error."""
    field = e.field_path
    if field.startswith("--"):
        if field == "--config":
            return f"{e}; fix the file or pass another --config"
        return f"{e}; see `python -m lth_core {command or ''} --help`".replace("  ", " ")
    if "unknown field" in str(e):
        return f"{e}; remove or rename it" + (f" in {config_file}" if config_file else "")
    flags = list(dict.fromkeys(f for path in (field, *e.related) if (f := _flag_of(path, command))))
    where = f"{field} in {config_file}" if config_file else None
    fixes = [*flags, *([where] if where else [])]
    if fixes:
        return f"{e}; fix {' or '.join(fixes)}"
    return f"{e}; see `python -m lth_core {command or ''} --help`".replace("  ", " ")


def error_text(e: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message of a user-facing error; None for anything else (a bug)."""
    from lth_core.data import DatasetFormatError, DatasetNotFoundError, not_found_text
    from lth_core.pruning import EmptyLayerError
    from lth_core.store import CorruptArtifactError, LockTimeout, OutsideStoreError

    command = getattr(args, "command", None)
    if isinstance(e, InputError):
        return str(e)
    if isinstance(e, ConfigError):
        return config_error_text(e, command, getattr(args, "config", None))
    if isinstance(e, DatasetNotFoundError):
        return not_found_text(e)
    if isinstance(e, DatasetFormatError):
        return f"{e}; download the data set again and point --data-root at the extracted folder"
    if isinstance(e, OutsideStoreError):
        return f"refused path: {e}" if ";" in str(e) else f"refused path: {e}; keep the store's files inside it"
    if isinstance(e, CorruptArtifactError):
        return (f"a stored file is damaged ({e}); delete that file and run the command again: what depends on it "
                "is recomputed")
    if isinstance(e, LockTimeout):
        return f"{e}; wait for that process to finish, or stop it and run again"
    if isinstance(e, EmptyLayerError):  # a global ranking of scores emptied a layer: found only while drawing
        return (f"{str(e).partition(';')[0]}; draw fewer or less sparse levels (--num-levels, --prune-rate or "
                "--sparsities), or use --scope layerwise")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LTH_DEBUG", "") not in ("", "0")
    for old, new in RENAMED.items():
        if getattr(args, "renamed_" + old.strip("-").replace("-", "_"), None) is not None:
            print(f"error: {old} is no flag of `python -m lth_core {args.command}`; use {new}", file=sys.stderr)
            return EXIT_USER_ERROR
    try:
        result = args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again: finished stages are kept", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line unless --debug
        message = error_text(e, args)
        if debug:
            traceback.print_exc()
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: unexpected {type(e).__name__}: {first_line(e)}; rerun with --debug (or LTH_DEBUG=1) for "
              "the traceback, and report it", file=sys.stderr)
        return 1
    if isinstance(result, int):  # a command that printed its own report returns its exit status
        return result
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
