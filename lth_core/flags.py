"""Flag tables to nested config dicts, shared by `python -m lth_core` and the sweeps.

A table maps each command-line flag to (dotted field, kind, help). Kinds: a type
(`int`, `float`, `str`), "ints"/"floats" (comma-separated lists), "kd" ("ALPHA,T"),
"flag" (true when given) and "section" (switches on an optional config section
with its defaults). Files, flags and `--set` overrides merge into one dict that
`lth_core.config.from_dict` validates.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from lth_core.config import ConfigError

FlagTable = dict[str, tuple[str, Any, str]]


def add_flags(parser: argparse.ArgumentParser, flags: FlagTable) -> None:
    for flag, (_, kind, help_text) in flags.items():
        if kind in ("flag", "section"):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=flag.strip("-").split("-")[-1].upper(), help=help_text)


def parse_value(kind: Any, raw: Any, flag: str) -> Any:
    try:
        if kind == "flag":
            return True
        if kind == "section":
            return {}
        if kind == "ints":
            return [int(v) for v in raw.split(",") if v.strip()]
        if kind == "floats":
            return [float(v) for v in raw.split(",") if v.strip()]
        if kind == "kd":
            alpha, temperature = (float(v) for v in raw.split(","))
            return {"alpha": alpha, "temperature": temperature}
        return kind(raw)
    except ValueError:
        raise ConfigError(flag, f"cannot read {raw!r}") from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["a"]["b"] = value for "a.b"; a dict value merges into a dict already there."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(tree.get(p), dict):
            tree[p] = {}
        tree = tree[p]
    if isinstance(value, dict) and isinstance(tree.get(leaf), dict):
        tree[leaf] = deep_merge(tree[leaf], value)
    else:
        tree[leaf] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def overrides(args: argparse.Namespace, flags: FlagTable, prefix: str = "") -> dict[str, Any]:
    """The nested dict of the flags that were given."""
    tree: dict[str, Any] = {}
    for flag, (dotted, kind, _) in flags.items():
        raw = getattr(args, flag.strip("-").replace("-", "_"))
        if raw is not None:
            set_dotted(tree, prefix + dotted, parse_value(kind, raw, flag))
    return tree
