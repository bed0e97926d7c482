"""`python -m lth_core draw|spend|show|analyze|tweaks`: the core without Ray or MLflow.

Each command takes a config file (JSON or YAML), flags, or both (flags win),
shows progress on stderr and prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lth_core import paths
from lth_core.config import ConfigError, SpendConfig, TicketConfig, from_dict, read_mapping, recipe_overlay
from lth_core.flags import FlagTable, add_flags, deep_merge, overrides, tweak_flags
from lth_core.tables import StageProgress, format_levels

DEFAULT_STORE = "artifacts"

# flag -> (dotted field inside a TicketConfig, kind, help); kinds: lth_core.flags
TICKET_FLAGS: FlagTable = {
    "--dataset": ("data.name", str, "digits | cifar10 | cifar100 | tinyimagenet"),
    "--data-root": ("data.root", str, "folder holding the CIFAR or Tiny-ImageNet files"),
    "--val-fraction": ("data.val_fraction", float, "share of the training set held out for validation"),
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
    "--prune-method": ("pruning.method", str, "imp | omp"),
    "--prune-rate": ("pruning.rate", float, "share of remaining weights removed per IMP level"),
    "--levels": ("pruning.levels", int, "number of pruning levels"),
    "--sparsities": ("pruning.sparsities", "floats", "OMP target sparsities, comma separated"),
    "--scope": ("pruning.scope", str, "global | layerwise"),
    "--imp-rewind-epoch": ("pruning.rewind_epoch", int, "epoch IMP rewinds the survivors to (0 = init)"),
    "--keep-epochs": ("keep_epochs", "ints", "dense-run epochs kept as rewind points, comma separated"),
}

SPEND_FLAGS: FlagTable = {
    "--level": ("level", int, "pruning level to spend (0 = the dense net)"),
    "--spend-seed": ("seed", int, "seed of the re-training"),
    "--spend-epochs": ("recipe.epochs", int, "re-training epochs; the rest of the recipe stays the ticket's"),
    **tweak_flags(),
}


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


def _store(args: argparse.Namespace):
    from lth_core.store import ArtifactStore

    return ArtifactStore(args.store)


def cmd_draw(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.lottery import draw

    ticket = ticket_from_args(args)
    progress = StageProgress(default_epochs=ticket.recipe.epochs)
    try:
        summary = draw(ticket, _store(args), progress)
    finally:
        progress.close()
    print(format_levels(summary), file=sys.stderr)
    return summary


def cmd_spend(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.lottery import spend

    config = spend_from_args(args)
    progress = StageProgress({f"spend level {config.level}": config.train_recipe.epochs},
                             default_epochs=config.ticket.recipe.epochs)
    try:
        result = spend(config, _store(args), on_stage_epoch=progress)
    finally:
        progress.close()
    result = {k: v for k, v in result.items() if k != "history"}
    print(f"spent level {result['level']} ({result['sparsity']:.2%} sparse) with {result['tweak']}: "
          f"test acc {result['test_acc']:.2%} (vanilla {result['vanilla_test_acc']:.2%}, "
          f"dense {result['dense_test_acc']:.2%})", file=sys.stderr)
    return result


def cmd_show(args: argparse.Namespace) -> dict[str, Any]:
    store = _store(args)
    key = args.key or ticket_from_args(args).key
    try:
        path = paths.ticket_summary(key)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not store.exists(path):
        raise SystemExit(f"error: no finished draw with key {key} in {store.uri}; run `python -m lth_core draw` first")
    from lth_core.lottery import read_draw

    summary, problems = read_draw(key, store)
    if problems:
        raise SystemExit(f"error: the draw {key} in {store.uri} has missing or corrupt files ({', '.join(problems[:3])}"
                         f"{' ...' if len(problems) > 3 else ''}); run `python -m lth_core draw` with its settings "
                         "to recompute them")
    print(format_levels(summary), file=sys.stderr)
    return summary


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.analysis.run import analyze_spend

    config = spend_from_args(args)
    out = Path(args.out or f"analysis/{config.key}")
    progress = StageProgress(default_epochs=config.train_recipe.epochs)
    try:
        result = analyze_spend(config, _store(args), out, activations=tuple(args.compare_activations.split(",")),
                               threshold=args.threshold, top_k=args.top_k, grid=args.grid, batches=args.batches,
                               on_stage_epoch=progress)
    finally:
        progress.close()
    print(result["table"], file=sys.stderr)
    print(f"eigenvalues: {result['hessian']['eigenvalues']}; plots and arrays in {out}", file=sys.stderr)
    return {k: v for k, v in result.items() if k != "table"}


def cmd_tweaks(args: argparse.Namespace) -> dict[str, Any]:
    from lth_core.tweaks import REGISTRY, docs_table

    print(docs_table(), file=sys.stderr)
    return {t.name: {"summary": t.summary, "hooks": list(t.hooks()), "search": list(t.search)} for t in REGISTRY}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lth_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="JSON or YAML config file (flags override it)")
        p.add_argument("--store", default=os.environ.get("LTH_STORE_URI", DEFAULT_STORE),
                       help="artifact store: a folder or a pyarrow URI such as s3://bucket/prefix "
                            "(default: $LTH_STORE_URI or ./artifacts)")

    p = sub.add_parser("draw", help="train the dense net and draw every pruning level (cached)")
    common(p)
    add_flags(p, TICKET_FLAGS)
    p.set_defaults(run=cmd_draw)

    p = sub.add_parser("spend", help="re-train one level of a ticket with tweaks (draws it first if needed)")
    common(p)
    add_flags(p, TICKET_FLAGS)
    add_flags(p, SPEND_FLAGS)
    p.set_defaults(run=cmd_spend)

    p = sub.add_parser("show", help="print the per-level table of a stored draw")
    common(p)
    p.add_argument("--key", help="ticket key (instead of ticket flags)")
    add_flags(p, TICKET_FLAGS)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("analyze", help="activation sparsity, Hessian eigenvalues and loss landscape of a spend")
    common(p)
    add_flags(p, TICKET_FLAGS)
    add_flags(p, SPEND_FLAGS)
    p.add_argument("--out", help="output folder (default analysis/<spend key>)")
    p.add_argument("--compare-activations", default="relu,swish",
                   help="activations to compare in the sparsity table, comma separated")
    p.add_argument("--threshold", type=float, default=1e-3, help="|a| below which an activation counts as zero")
    p.add_argument("--top-k", type=int, default=1, help="number of top Hessian eigenvalues")
    p.add_argument("--grid", type=int, default=11, help="points per axis of the loss landscape")
    p.add_argument("--batches", type=int, default=4,
                   help="train batches for the Hessian and landscape, test batches for activations")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("tweaks", help="the registered re-training tweaks: flags, values, labels, hooks")
    p.set_defaults(run=cmd_tweaks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except ConfigError as e:
        print(f"error: invalid configuration: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
