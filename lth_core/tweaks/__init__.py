"""Re-training tweaks: one module each (the contract: `lth_core.tweaks.base`), listed once in
`MODULES`. Everything else is derived from the registry: `TweakConfig`, the core CLI's flags,
the trial dict codec, the Optuna space, the MLflow params, the trial label, the report's columns
and the tweak table of the docs (`python -m lth_core tweaks`).

Registry order is the order in which hooks run and labels are joined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lth_core import registry
from lth_core.hooks import LossFn, TrainHook
from lth_core.schema import from_dict
from lth_core.tweaks.base import Flat, SpendContext, Tweak

if TYPE_CHECKING:
    from lth_core.config import SpendConfig
    from lth_core.data import Dataset

MODULES = (  # one line per tweak: the module in this package that defines its TWEAK
    "ticket_init",  # first: a fresh initialisation replaces the ticket's before other model hooks
    "activations",
    "skips",
    "label_smoothing",
    "distillation",
    "rescale_init",
    "rewind",
    "swa",
)
REGISTRY: tuple[Tweak, ...]
TWEAKS: dict[str, Tweak]
REGISTRY, TWEAKS = registry.load(__name__, MODULES, "TWEAK")

VANILLA = "vanilla"


def _validate(self: Any) -> None:
    for tweak in REGISTRY:
        value = getattr(self, tweak.name)
        if value is not None or tweak.section is None:
            tweak.validate(value)


def _active(self: Any) -> list[tuple[Tweak, Any]]:
    """(tweak, value) of every tweak that is on, in registry order."""
    return [(t, getattr(self, t.name)) for t in REGISTRY if t.is_on(getattr(self, t.name))]


def _describe(self: Any) -> str:
    """A short label such as 'swish+skip-identity+ls0.1' ('vanilla' when every tweak is off)."""
    return "+".join(t.label(v) for t, v in self.active()) or VANILLA


def _as_written(data: Mapping[Any, Any]) -> dict[Any, Any]:
    """A mapping of tweak values with YAML's split of a flat form undone. In a YAML flow mapping the
    comma ends a value, so `{kd: 0.5,5}` reads as {"kd": 0.5, 5: None}; a number with no value that
    follows a number of a tweak with a section continues that tweak's flat form ("0.5,5"), as the
    same text does on the command line (`--kd 0.5,5`)."""
    out: dict[Any, Any] = {}
    last = None  # the tweak with a section whose flat form a bare number would continue
    for key, value in data.items():
        if last is not None and value is None and _is_number(key) and _is_number(out[last]):
            out[last] = f"{_number_text(out[last])},{_number_text(key)}"
            continue
        out[key] = value
        last = key if key in TWEAKS and TWEAKS[key].section is not None else None
    return out


def _is_number(value: Any) -> bool:
    if isinstance(value, str):
        return all(_parses_as_number(part) for part in value.split(","))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


TweakConfig = dataclasses.make_dataclass(
    "TweakConfig",
    [(t.name, t.annotation, dataclasses.field(default=t.default, metadata={"help": t.summary, "parse": t.decode}))
     for t in REGISTRY],
    namespace={"__post_init__": _validate, "active": _active, "describe": _describe,
               "mapping_as_written": staticmethod(_as_written),
               "__doc__": "The re-training tweaks, one field per registered tweak; every default is vanilla LTH."},
    frozen=True)
TweakConfig.__module__ = __name__  # importable by name (pickling, repr)


def check_spend(spend: SpendConfig) -> None:
    """Each tweak's checks against the rest of the spend (e.g. a rewind epoch the ticket keeps)."""
    for tweak in REGISTRY:
        tweak.check_spend(getattr(spend.tweaks, tweak.name), spend)


def check_dataset(tweaks: Any, dataset: Dataset) -> None:
    """Each tweak that is on checks it can work on the data set (GradInit's batch fits the training set)."""
    for tweak, value in tweaks.active():
        tweak.check_dataset(value, dataset)


# --- trial dicts and search spaces ---------------------------------------------------------------
def to_flat(tweaks: Any) -> dict[str, Flat]:
    """Every tweak's value in flat form (what a search samples and MLflow shows)."""
    return {t.name: t.encode(getattr(tweaks, t.name)) for t in REGISTRY}


def from_flat(flat: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Any:
    """A TweakConfig from `base` (a TweakConfig dict) with the flat values of `flat` laid over it;
    keys of `flat` that name no tweak are ignored (a trial dict holds other settings too)."""
    data = {**(base or {}), **{name: value for name, value in flat.items() if name in TWEAKS}}
    return from_dict(TweakConfig, data, "tweaks.")  # each field reads its flat spellings (`Tweak.decode`)


# --- what a spend does with them -----------------------------------------------------------------
def start_epoch(tweaks: Any) -> int:
    """The dense-run epoch the spend starts from (0, the initialisation, unless a tweak rewinds)."""
    epochs = [t.start_epoch(v) for t, v in tweaks.active() if "start_epoch" in t.hooks()]
    return max(epochs, default=0)


def compose_loss(tweaks: Any, ctx: SpendContext, base: LossFn) -> LossFn:
    loss = base
    for tweak, value in tweaks.active():
        loss = tweak.loss(value, loss, ctx)
    return loss


def train_hooks(tweaks: Any, ctx: SpendContext) -> list[TrainHook]:
    return [hook for tweak, value in tweaks.active() for hook in tweak.train_hooks(value, ctx)]


# --- tracking and docs ---------------------------------------------------------------------------
def mlflow_params(tweaks: Any) -> dict[str, str]:
    """One param per tweak (its flat form) and, for an enabled section, one per setting
    (`kd_alpha`, `rescale_init_iterations`, ...)."""
    params = {}
    for tweak in REGISTRY:
        value = getattr(tweaks, tweak.name)
        params[tweak.name] = _text(tweak.encode(value))
        if tweak.section is not None and value is not None:
            for f in dataclasses.fields(value):
                params[f"{tweak.name}_{f.name}"] = _text(getattr(value, f.name))
    return params


def from_params(params: Mapping[str, Any]) -> Any:
    """A TweakConfig back from a run's params (what `mlflow_params` logged, as strings or as the
    numbers a table parsed them into); tweaks a run has no param for (older runs) are vanilla."""
    flat = {}
    for name, tweak in TWEAKS.items():
        value = _untext(params.get(name))
        if value is None:
            continue
        if tweak.value_type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if tweak.section is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = _text(value)  # a section's first setting alone ("390" iterations) reads back as a number
        flat[name] = value
    return from_flat(flat)


def _text(value: Flat) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _untext(value: Any) -> Any:
    import yaml

    return yaml.safe_load(value) if isinstance(value, str) and value not in ("off", "on") else value


def flag_name(tweak: Tweak, setting: str | None = None) -> str:
    return "--" + "-".join(p.replace("_", "-") for p in (tweak.name, setting) if p)


def docs_table() -> str:
    """The tweak table of docs/tweaks.md (a test keeps the page in step with the registry)."""
    rows = ["| tweak | core flag | values (vanilla first) | example label | hooks | Optuna default |",
            "| --- | --- | --- | --- | --- | --- |"]
    for t in REGISTRY:
        if t.section is not None:
            fields = dataclasses.fields(t.section)
            values = ("off \\| on \\| " + ",".join(f.name for f in fields) + " (defaults "
                      + ",".join(_text(f.default) for f in fields) + ")")
        elif t.choices:
            values = " \\| ".join(t.choices)
        else:
            values = f"{t.value_type.__name__} (default {_text(t.default)})"
        rows.append(f"| `{t.name}` | `{flag_name(t)}` | {values} | `{t.label(t.decode(t.example))}` | "
                    f"{', '.join(t.hooks())} | {', '.join(_text(v) for v in t.search)} |")
    return "\n".join(rows)
