"""Flag tables to nested config dicts, shared by `python -m lth_core` and the sweeps.

A table maps each command-line flag to (dotted field, kind, help). Kinds: a type
(`int`, `float`, `str`), "ints"/"floats" (comma-separated lists), "flag" (true when
given) and `Parsed` (a function that reads the text; with `const`, the flag may also
be given alone). Files, flags and `--set` overrides merge into one dict that
`lth_core.config.from_dict` validates. `tweak_flags` derives the tweaks' flags from
their registry.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lth_core.schema import ConfigError

FlagTable = dict[str, tuple[str, Any, str]]


@dataclass(frozen=True)
class Parsed:
    """A flag kind read by `parse(text)`; with `const`, the flag given alone means `const`."""

    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    const: str | None = None


def tweak_flags(prefix: str = "tweaks.") -> FlagTable:
    """One flag per registered tweak (`--kd 0.5,4`, `--rescale-init`), and one per setting of a
    tweak with a section (`--kd-alpha 0.5`: turns the tweak on with that setting)."""
    from lth_core.tweaks import REGISTRY, flag_name

    flags: FlagTable = {}
    for tweak in REGISTRY:
        if tweak.section is None:
            allowed = " | ".join(tweak.choices) if tweak.choices else tweak.value_type.__name__
            flags[flag_name(tweak)] = (prefix + tweak.name, Parsed(tweak.as_config_value, tweak.value_type.__name__.upper()),
                                       f"{tweak.summary}: {allowed} (default {tweak.encode(tweak.default)})")
            continue
        settings = dataclasses.fields(tweak.section)
        types = typing.get_type_hints(tweak.section)
        flags[flag_name(tweak)] = (prefix + tweak.name, Parsed(tweak.as_config_value, "off|on|" + ",".join(
            f.name.upper() for f in settings), const="on"), f"{tweak.summary} (default off; alone: on)")
        for f in settings:
            flags[flag_name(tweak, f.name)] = (f"{prefix}{tweak.name}.{f.name}", types[f.name],
                                               f"{f.metadata.get('help', f.name)} (default {f.default}; "
                                               f"turns {tweak.name} on)")
    return flags


def default_text(value: Any) -> str:
    """A config default as a flag takes it: lists comma separated, None and () as 'none'."""
    if value is None or value == ():
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(default_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_default(defaults: Any, dotted: str) -> Any:
    """The value at `dotted` in a config object or nested dict; `dataclasses.MISSING` when not there."""
    value = defaults
    for part in dotted.split("."):
        if isinstance(value, dict):
            if part not in value:
                return dataclasses.MISSING
            value = value[part]
        elif dataclasses.is_dataclass(value) and hasattr(value, part):
            value = getattr(value, part)
        else:
            return dataclasses.MISSING
    return value


def add_flags(parser: argparse.ArgumentParser, flags: FlagTable, defaults: Any = None,
              default_of: Callable[[str], str | None] | None = None) -> None:
    """One argument per flag, all with `default=None` (a flag not given leaves the config's value).
    The help shows the real default: `default_of(dotted)` when given, else the field's value in
    `defaults` (a config object); a help text that names its default already is left as it is."""
    for flag, (dotted, kind, help_text) in flags.items():
        if "default" not in help_text and kind != "flag":
            shown = default_of(dotted) if default_of is not None else None
            if shown is None and defaults is not None:
                value = field_default(defaults, dotted)
                shown = None if value is dataclasses.MISSING or dataclasses.is_dataclass(value) else default_text(value)
            if shown is not None:
                help_text = f"{help_text} (default: {shown})"
        help_text = help_text.replace("%", "%%").replace("%%%%", "%%")
        if kind == "flag":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif isinstance(kind, Parsed):
            parser.add_argument(flag, default=None, nargs="?" if kind.const else None, const=kind.const,
                                metavar=kind.metavar, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=flag.strip("-").split("-")[-1].upper(), help=help_text)


def parse_value(kind: Any, raw: Any, flag: str) -> Any:
    if kind in ("ints", "floats") and not all(v.strip() for v in raw.split(",")) and raw.strip():
        raise ConfigError(flag, f"cannot read {raw!r}: an entry between commas is empty")
    try:
        if kind == "flag":
            return True
        if kind in ("ints", "floats"):  # "" is the empty list
            return [(int if kind == "ints" else float)(v) for v in raw.split(",") if v.strip()]
        if isinstance(kind, Parsed):
            return kind.parse(raw)
        return kind(raw)
    except ConfigError as e:
        raise ConfigError(flag, f"cannot read {raw!r} ({e})") from None
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
    """The nested dict of the flags that were given. A flag that sets a whole section (`--kd 0.5,5`,
    `--swa off`) and one that sets a field of it (`--kd-alpha`) contradict each other unless the
    first only turns the section on: refused, rather than one silently winning."""
    given = {flag: raw for flag in flags if (raw := getattr(args, flag.strip("-").replace("-", "_"))) is not None}
    for whole, raw in given.items():
        section = flags[whole][0]
        for part in given:
            kind = flags[whole][1]
            if flags[part][0].startswith(section + ".") and not (isinstance(kind, Parsed) and raw == kind.const):
                raise ConfigError(part, f"contradicts {whole} {raw}, which sets all of {section}; give either "
                                        f"{whole} or its settings ({whole} on {part} ...)")
    tree: dict[str, Any] = {}
    for flag, raw in given.items():
        dotted, kind, _ = flags[flag]
        set_dotted(tree, prefix + dotted, parse_value(kind, raw, flag))
    return tree
