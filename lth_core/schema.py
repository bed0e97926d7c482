"""Frozen-dataclass configuration machinery: validation errors, content keys, dict and file IO.

Generic over any frozen dataclass, so the core's configs (`lth_core.config`) and every tweak's
own section (`lth_core.tweaks`) share one notion of a field, a default and a key.

The content key of a config is the sha256 of the canonical JSON of its fields that differ from
their defaults, so adding a field with a default never changes an old key. Fields that only say
*where* or *how fast* something runs are declared with `not_keyed` and left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed.

    `related` names the other fields the problem involves (the epochs a kept epoch must fall in),
    so that a hint can name every flag that fixes it. Paths are relative to where the config
    sits; `from_dict` roots them at the top of what it reads (`ticket.recipe.epochs` in a spend
    or a sweep). Errors pickle with their fields: a Ray trial's error reaches the driver whole."""

    def __init__(self, field_path: str, message: str, related: tuple[str, ...] = ()):
        self.field_path = field_path
        self.message = message
        self.related = tuple(related)
        super().__init__(f"{field_path}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.field_path, self.message, self.related)

    def rooted(self, prefix: str, anchors: Any) -> ConfigError:
        """This error with its paths under `prefix`: each path is cut at its first part that names
        one of `anchors` (the fields of the config that raised it), and `prefix` put before that."""
        if not prefix:
            return self

        def root(path: str) -> str:
            parts = path.split(".")
            start = next((i for i, part in enumerate(parts) if part in anchors), 0)
            return prefix + ".".join(parts[start:])

        return ConfigError(root(self.field_path), self.message, tuple(root(p) for p in self.related))


def not_keyed(default: Any) -> Any:
    """A field that says where or how fast something runs: left out of content keys."""
    return field(default=default, metadata={"key": False})


def documented(default: Any, help: str) -> Any:
    """A field with help text (shown by derived flags and docs)."""
    return field(default=default, metadata={"help": help})


def require(ok: bool, field_path: str, message: str, related: tuple[str, ...] = ()) -> None:
    if not ok:
        raise ConfigError(field_path, message, related)


def choice(value: str, allowed: tuple[str, ...], field_path: str) -> None:
    require(value in allowed, field_path, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


Config = TypeVar("Config")


def key_dict(config: Any) -> dict[str, Any]:
    """Fields that differ from their defaults, recursively, keyed fields only; a float field
    given as an int (4 for 4.0) is keyed as the float, so equal configs get equal keys."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if not f.metadata.get("key", True):
            continue
        value = _as_float_where_declared(hints[f.name], getattr(config, f.name))
        if dataclasses.is_dataclass(value):
            default = _field_default(f)
            sub = key_dict(value)
            if default is None or sub or type(default) is not type(value):
                # An enabled optional section (kd, rescale_init) counts even at its defaults.
                out[f.name] = sub
        elif value != _field_default(f):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _as_float_where_declared(hint: Any, value: Any) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (float,) and isinstance(value, tuple):
        return tuple(float(v) for v in value)
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(config: Any, length: int = 20) -> str:
    """sha256 of the canonical JSON of the non-default fields, with the type name mixed in."""
    payload = canonical_json({"type": type(config).__name__, "fields": key_dict(config)})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def to_dict(config: Any) -> dict[str, Any]:
    """Every field (keyed or not), JSON-ready."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_dict(cls: type[Config], data: dict[str, Any] | None, _path: str = "") -> Config:
    """Build `cls` from a nested dict, rejecting unknown fields with the list of known ones. A field
    whose metadata has `parse` is read by it (a tweak's value in any of its flat spellings)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_path.rstrip(".") or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    prepare = getattr(cls, "mapping_as_written", None)  # a config that undoes what YAML did to its flat forms
    if prepare is not None:
        data = prepare(data)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{_path}{unknown[0]}", f"unknown field; known fields: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        parse = known[name].metadata.get("parse")  # a field that reads its own spellings
        if parse is None:
            kwargs[name] = coerce(hints[name], value, f"{_path}{name}")
            continue
        try:
            kwargs[name] = parse(value)
        except ConfigError as e:
            raise e.rooted(_path, {name}) from None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.rooted(_path, known) from None
    except TypeError as e:
        raise ConfigError(_path.rstrip(".") or cls.__name__, str(e)) from e


def coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(non_none[0], value, path)
    if dataclasses.is_dataclass(hint):
        if value is True:
            return hint()
        return from_dict(hint, value, path + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        if dataclasses.is_dataclass(args[0]):  # a list of configs: name the entry (combos[2].kd)
            return tuple(coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        return tuple(coerce(args[0], v, path) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a string, got {value!r} (YAML reads unquoted off/on/yes/no "
                                    "as booleans: quote the value)")
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value


def read_mapping(path: str | Path, field: str = "--config") -> dict[str, Any]:
    """A JSON (.json) or YAML file holding a mapping of config fields; a file that is missing, or
    does not parse, raises ConfigError naming `field` and the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(field, f"{path} is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(field, f"config file {path} not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, OSError, yaml.YAMLError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(field, f"{path} does not parse: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path} must hold a mapping of config fields")
    return data


def load_config(cls: type[Config], path: str | Path) -> Config:
    """Read a config from a .json, .yaml or .yml file."""
    return from_dict(cls, read_mapping(path, str(path)))


def dump_config(config: Any, path: str | Path) -> None:
    path = Path(path)
    data = to_dict(config)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=True))


def replace(config: Config, **changes: Any) -> Config:
    """`dataclasses.replace` that also accepts dotted paths: replace(spend, **{"ticket.seed": 1})."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = replace(getattr(config, head), **sub)
    return dataclasses.replace(config, **direct)  # type: ignore[type-var]
