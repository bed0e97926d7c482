"""Typed, frozen configuration with stable content keys.

One configuration type flows from the sweep to the core: a `TicketConfig` says
what a draw needs (data, model, dense recipe, pruning); a `SpendConfig` names a
ticket, a level and the re-training settings (recipe and tweaks).

The content key of a config is the sha256 of the canonical JSON of its fields
that differ from their defaults, so adding a field with a default never changes
an old key. Fields that only say *where* or *how fast* something runs (a data
folder, the device, the precision) are marked ``key=False`` and left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")
ARCHS = ("resnet18", "resnet34", "vgg16", "mobilenet")
PRUNE_METHODS = ("imp", "omp")
PRUNE_SCOPES = ("global", "layerwise")
ACTIVATIONS = ("relu", "swish", "mish", "gelu", "elu", "softplus", "pswish")
SKIPS = ("none", "identity", "conv1x1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""

    def __init__(self, field_path: str, message: str):
        self.field_path = field_path
        super().__init__(f"{field_path}: {message}")


def _not_keyed(default: Any) -> Any:
    return field(default=default, metadata={"key": False})


def _require(ok: bool, field_path: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_path, message)


def _choice(value: str, allowed: tuple[str, ...], field_path: str) -> None:
    _require(value in allowed, field_path, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, and how the official training set is split 9:1 into train/validation."""

    name: str = "digits"
    root: str | None = _not_keyed(None)
    val_fraction: float = 0.1
    split_seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        _choice(self.name, DATASETS, "data.name")
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if self.name != "digits":
            _require(self.root is not None, "data.root",
                     f"data set {self.name!r} is read from a folder: set data.root (flag --data-root)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture family and width multiplier; input channels and classes come from the data."""

    arch: str = "resnet18"
    width: float = 1.0

    def __post_init__(self) -> None:
        _choice(self.arch, ARCHS, "model.arch")
        _require(self.width > 0, "model.width", f"must be > 0, got {self.width}")


@dataclass(frozen=True)
class RecipeConfig:
    """SGD training recipe (the authors' defaults). `milestones=()` means 50% and 75% of the epochs."""

    epochs: int = 180
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    device: str = _not_keyed("auto")
    precision: str = _not_keyed("auto")
    channels_last: bool = _not_keyed(True)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "recipe.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, "recipe.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, "recipe.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "recipe.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "recipe.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 < self.lr_gamma <= 1, "recipe.lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        for m in self.milestones:
            _require(1 <= m < self.epochs, "recipe.milestones",
                     f"epoch {m} is past the last epoch ({self.epochs}); milestones must be in [1, {self.epochs - 1}]")
        _require(list(self.milestones) == sorted(set(self.milestones)), "recipe.milestones",
                 f"must be strictly increasing, got {list(self.milestones)}")
        _choice(self.device, DEVICES, "recipe.device")
        _choice(self.precision, PRECISIONS, "recipe.precision")

    @property
    def lr_milestones(self) -> tuple[int, ...]:
        if self.milestones:
            return self.milestones
        return tuple(sorted({m for m in (self.epochs // 2, (3 * self.epochs) // 4) if 1 <= m < self.epochs}))


@dataclass(frozen=True)
class PruneConfig:
    """How masks are drawn. IMP: `levels` rounds, each removing `rate` of the remaining weights
    (level k has sparsity 1 - (1 - rate)^k). OMP: one shot from the dense net to each of those
    sparsities, or to `sparsities` when given."""

    method: str = "imp"
    rate: float = 0.2
    levels: int = 5
    sparsities: tuple[float, ...] = ()
    scope: str = "global"
    prune_linear: bool = False
    rewind_epoch: int = 0
    allow_empty_layers: bool = False

    def __post_init__(self) -> None:
        _choice(self.method, PRUNE_METHODS, "pruning.method")
        _choice(self.scope, PRUNE_SCOPES, "pruning.scope")
        _require(0 < self.rate < 1, "pruning.rate", f"must be in (0, 1), got {self.rate}")
        _require(self.levels >= 1, "pruning.levels", f"must be >= 1, got {self.levels}")
        _require(self.rewind_epoch >= 0, "pruning.rewind_epoch", f"must be >= 0, got {self.rewind_epoch}")
        for s in self.sparsities:
            _require(0 <= s < 1, "pruning.sparsities", f"sparsity {s} is outside [0, 1)")
        if self.sparsities:
            _require(self.method == "omp", "pruning.sparsities",
                     "explicit sparsities are for one-shot pruning (method 'omp'); IMP follows 1 - (1 - rate)^k")

    def level_sparsities(self) -> tuple[float, ...]:
        """Target sparsity of levels 1..L."""
        if self.sparsities:
            return self.sparsities
        return tuple(1 - (1 - self.rate) ** k for k in range(1, self.levels + 1))


@dataclass(frozen=True)
class TicketConfig:
    """Everything a draw needs. `keep_epochs` are the dense run's epochs whose weights are kept
    as rewind points (epoch 0, the initialisation, is always kept)."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    recipe: RecipeConfig = RecipeConfig()
    pruning: PruneConfig = PruneConfig()
    keep_epochs: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # Epoch 0 is always kept and order does not matter: one spelling, one key.
        object.__setattr__(self, "keep_epochs", tuple(sorted(set(self.keep_epochs) - {0})))
        for e in self.keep_epochs:
            _require(0 <= e < self.recipe.epochs, "keep_epochs",
                     f"epoch {e} is not in the dense run (epochs 0..{self.recipe.epochs - 1})")
        _require(self.pruning.rewind_epoch in self.rewind_epochs, "pruning.rewind_epoch",
                 f"IMP rewinds to epoch {self.pruning.rewind_epoch}, which the dense run does not keep; "
                 f"add it to keep_epochs (kept: {list(self.rewind_epochs)})")

    @property
    def rewind_epochs(self) -> tuple[int, ...]:
        return tuple(sorted({0, *self.keep_epochs}))

    @property
    def num_levels(self) -> int:
        return len(self.pruning.level_sparsities())

    @property
    def key(self) -> str:
        return content_key(self)


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation from the draw's dense final model."""

    alpha: float = 0.9
    temperature: float = 5.0

    def __post_init__(self) -> None:
        _require(0 < self.alpha <= 1, "tweaks.kd.alpha", f"must be in (0, 1], got {self.alpha}")
        _require(self.temperature > 0, "tweaks.kd.temperature", f"must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class RescaleInitConfig:
    """GradInit (Zhu et al. 2021): learn one non-negative scale per weight/bias tensor."""

    iterations: int = 100
    lr: float = 1e-2
    eta: float = 0.1
    gamma: float = 1.0
    min_scale: float = 0.01
    batch_size: int = 128

    def __post_init__(self) -> None:
        _require(self.iterations >= 1, "tweaks.rescale_init.iterations", f"must be >= 1, got {self.iterations}")
        _require(self.lr > 0, "tweaks.rescale_init.lr", f"must be > 0, got {self.lr}")
        _require(self.eta > 0, "tweaks.rescale_init.eta", f"must be > 0, got {self.eta}")
        _require(self.gamma > 0, "tweaks.rescale_init.gamma", f"must be > 0, got {self.gamma}")
        _require(0 <= self.min_scale <= 1, "tweaks.rescale_init.min_scale", f"must be in [0, 1], got {self.min_scale}")
        _require(self.batch_size >= 2, "tweaks.rescale_init.batch_size", f"must be >= 2, got {self.batch_size}")


@dataclass(frozen=True)
class TweakConfig:
    """The paper's re-training tweaks. Every default is vanilla LTH."""

    activation: str = "relu"
    skip: str = "none"
    label_smoothing: float = 0.0
    kd: KDConfig | None = None
    rescale_init: RescaleInitConfig | None = None
    rewind_epoch: int = 0

    def __post_init__(self) -> None:
        _choice(self.activation, ACTIVATIONS, "tweaks.activation")
        _choice(self.skip, SKIPS, "tweaks.skip")
        _require(0 <= self.label_smoothing < 1, "tweaks.label_smoothing",
                 f"must be in [0, 1), got {self.label_smoothing}")
        _require(self.rewind_epoch >= 0, "tweaks.rewind_epoch", f"must be >= 0, got {self.rewind_epoch}")

    def describe(self) -> str:
        """A short human label such as 'swish+skip-identity+ls0.1' ('vanilla' when nothing is on)."""
        parts = []
        if self.activation != "relu":
            parts.append(self.activation)
        if self.skip != "none":
            parts.append(f"skip-{self.skip}")
        if self.label_smoothing:
            parts.append(f"ls{self.label_smoothing:g}")
        if self.kd is not None:
            parts.append(f"kd{self.kd.alpha:g},{self.kd.temperature:g}")
        if self.rescale_init is not None:
            parts.append("gradinit")
        if self.rewind_epoch:
            parts.append(f"rewind{self.rewind_epoch}")
        return "+".join(parts) or "vanilla"


@dataclass(frozen=True)
class SpendConfig:
    """Re-train level `level` of a ticket. `recipe=None` re-uses the ticket's dense recipe."""

    ticket: TicketConfig = TicketConfig()
    level: int = 1
    recipe: RecipeConfig | None = None
    tweaks: TweakConfig = TweakConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        n = self.ticket.num_levels
        _require(0 <= self.level <= n, "level", f"must be in [0, {n}] (0 is the dense net), got {self.level}")
        _require(self.tweaks.rewind_epoch in self.ticket.rewind_epochs, "tweaks.rewind_epoch",
                 f"the draw keeps epochs {list(self.ticket.rewind_epochs)} of the dense run; "
                 f"{self.tweaks.rewind_epoch} is not among them (add it to the ticket's keep_epochs)")

    @property
    def train_recipe(self) -> RecipeConfig:
        return self.recipe if self.recipe is not None else self.ticket.recipe

    @property
    def sparsity(self) -> float:
        return 0.0 if self.level == 0 else self.ticket.pruning.level_sparsities()[self.level - 1]

    @property
    def key(self) -> str:
        return content_key(self)


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


def recipe_overlay(base: RecipeConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """A spend recipe given in part: the fields not given come from the ticket's recipe (its
    explicit milestones only while the epochs stay the same)."""
    merged = to_dict(base)
    if "epochs" in changes and "milestones" not in changes:
        merged["milestones"] = []
    return {**merged, **changes}


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
    """Build `cls` from a nested dict, rejecting unknown fields with the list of known ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_path.rstrip(".") or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{_path}{unknown[0]}", f"unknown field; known fields: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{_path}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(_path.rstrip(".") or cls.__name__, str(e)) from e


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, path)
    if dataclasses.is_dataclass(hint):
        if value is True:
            return hint()
        return from_dict(hint, value, path + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, path) for v in value)
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
    """A JSON (.json) or YAML file holding a mapping of config fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"config file {path} not found")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
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
