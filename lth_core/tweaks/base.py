"""The contract of a re-training tweak.

A tweak is one module that subclasses `Tweak` and exposes an instance as `TWEAK`; one line in
`lth_core.tweaks.REGISTRY` turns it on everywhere. It declares:

- `name`: its field of `TweakConfig`, and its key in flags, trial dicts, Optuna spaces,
  MLflow params and report columns;
- its *value*: either a scalar (`value_type` str, float or int, `default` = vanilla, `choices`
  for strings) or a `section`: a frozen dataclass of settings, None when the tweak is off.
  Vanilla values are left out of content keys, so adding a tweak never changes an old key;
- `summary` (one line of help), `label(value)` (its piece of a trial's label, e.g. "ls0.1"),
  `search` (its default Optuna choices, in flat form), `example` (a value that is on, in flat
  form, for the docs and the tests), `validate` and `check_spend`;
- the hooks it uses, called only when the tweak is on, in registry order:
  - `start_epoch`: the dense-run epoch whose weights the spend starts from (rewinding);
  - `model`: change the built model before it moves to its device (activations, skips, a
    fresh initialisation);
  - `mask`: the mask the spend trains under, from the drawn one (the shuffled control); it is
    fixed before training starts and never changes during it;
  - `init`: change the masked starting weights before training (GradInit); returns what it
    learned, for the record;
  - `loss`: wrap the training loss (label smoothing, distillation);
  - `train_hooks`: `lth_core.hooks.TrainHook`s for the batch, step, epoch and end points of
    `fit` (SWA's averaging and final weights).

Flat form: a tweak's value as one plain value (str, number or bool), as flags, trial dicts and
Optuna take it. A scalar is itself; a section is "off", "on" (its defaults) or its fields'
values in order, comma-separated, as far as they differ from the defaults ("0.5,4" is
distillation with alpha 0.5 and temperature 4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
import yaml
from torch import nn

from lth_core.hooks import LossFn, TrainHook
from lth_core.schema import ConfigError, choice, coerce, from_dict, to_dict

if TYPE_CHECKING:
    from lth_core.config import SpendConfig
    from lth_core.data import Dataset
    from lth_core.masks import Mask
    from lth_core.training import Runtime

Flat = str | int | float | bool | None
HOOKS = ("start_epoch", "model", "mask", "init", "loss", "train_hooks")


class SpendContext(Protocol):
    """What a spend offers its tweaks' hooks (built by `lth_core.lottery`)."""

    spend: SpendConfig
    runtime: Runtime
    dataset: Dataset
    mask: Mask | None

    def teacher(self) -> nn.Module:
        """The ticket's trained dense net in eval mode, without gradients, on the spend's device."""

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled, augmented training batches of exactly `batch_size` images."""


class Tweak:
    """Base class of every tweak; see the module docstring for what a subclass declares."""

    name: str = ""
    summary: str = ""
    section: type | None = None
    value_type: type = str
    default: Any = None
    choices: tuple[str, ...] = ()
    search: tuple[Flat, ...] = ()
    example: Flat = "on"

    # --- declaration -------------------------------------------------------------------------
    @property
    def annotation(self) -> Any:
        """The type of the TweakConfig field."""
        return self.section | None if self.section is not None else self.value_type

    @property
    def path(self) -> str:
        return f"tweaks.{self.name}"

    def is_on(self, value: Any) -> bool:
        return value != self.default

    def validate(self, value: Any) -> None:
        """Raise ConfigError for a value the tweak cannot take (sections check their own fields)."""
        if self.choices:
            choice(value, self.choices, self.path)

    def check_spend(self, value: Any, spend: SpendConfig) -> None:
        """Raise ConfigError when the value does not fit the rest of the spend."""

    def check_dataset(self, value: Any, dataset: Dataset) -> None:
        """Raise ConfigError when the value cannot work on the spend's data set (checked before any
        training, once the data set is read; called only when the tweak is on)."""

    def label(self, value: Any) -> str:
        raise NotImplementedError(f"tweak {self.name!r} must say how it labels a trial")

    def changed_settings(self, value: Any) -> str:
        """A section's settings that differ from its defaults, for a label: `(iterations=50)`, or ''."""
        changed = [f"{name}={_flat_text(getattr(value, name))}" for name in self._changed_fields(value)]
        return f"({','.join(changed)})" if changed else ""

    def _changed_fields(self, value: Any) -> list[str]:
        """The names of a section value's settings that differ from the defaults, in field order."""
        defaults = self.section()
        return [f.name for f in dataclasses.fields(self.section) if getattr(value, f.name) != getattr(defaults, f.name)]

    def hooks(self) -> tuple[str, ...]:
        """The hooks this tweak implements."""
        return tuple(h for h in HOOKS if getattr(type(self), h) is not getattr(Tweak, h))

    # --- flat form ---------------------------------------------------------------------------
    def encode(self, value: Any) -> Flat:
        if self.section is None:
            return value
        if value is None:
            return "off"
        changed = self._changed_fields(value)
        if not changed:
            return "on"
        fields = [f.name for f in dataclasses.fields(self.section)]
        return ",".join(_flat_text(getattr(value, f)) for f in fields[:fields.index(changed[-1]) + 1])

    def decode(self, flat: Any) -> Any:
        """The value of a flat form (a value already decoded passes through); raises ConfigError."""
        if self.section is None:
            value = flat
            if isinstance(flat, str) and self.value_type is not str:
                value = _parse_number(flat, self.path)
            value = coerce(self.value_type, value, self.path)
            self.validate(value)
            return value
        if flat is None or flat is False or flat in ("off", "false", "none"):
            return None
        if isinstance(flat, self.section):
            return flat
        if flat is True or flat in ("on", "true", {}):
            return self.section()
        if isinstance(flat, dict):
            return from_dict(self.section, flat, self.path + ".")
        if isinstance(flat, str):
            names = [f.name for f in dataclasses.fields(self.section)]
            parts = [p.strip() for p in flat.split(",")]
            if len(parts) > len(names) or not all(parts):
                raise ConfigError(self.path, f"cannot read {flat!r}: use off, on, or up to {len(names)} "
                                             f"comma-separated values ({', '.join(names)})")
            return from_dict(self.section, {n: _parse_number(p, f"{self.path}.{n}") for n, p in zip(names, parts)},
                             self.path + ".")
        raise ConfigError(self.path, f"cannot read {flat!r}: use off, on or comma-separated values")

    def as_config_value(self, flat: Any) -> Any:
        """The flat form as it goes into a TweakConfig dict (a section as a dict)."""
        value = self.decode(flat)
        return to_dict(value) if dataclasses.is_dataclass(value) else value

    # --- hooks (called only when the tweak is on) --------------------------------------------
    def start_epoch(self, value: Any) -> int:
        """The dense-run epoch whose weights the spend starts from."""
        return 0

    def model(self, value: Any, model: nn.Module, ctx: SpendContext) -> None:
        """Change the built model in place (on the CPU, before it moves to its device)."""

    def mask(self, value: Any, mask: Mask, ctx: SpendContext) -> Mask:
        """The mask to train under instead of the drawn one (same names and shapes)."""
        return mask

    def init(self, value: Any, model: nn.Module, ctx: SpendContext) -> dict[str, Any]:
        """Change the masked starting weights in place before training; returns what to record."""
        return {}

    def loss(self, value: Any, inner: LossFn, ctx: SpendContext) -> LossFn:
        """The training loss built on `inner` (plain cross-entropy, or what earlier tweaks made)."""
        return inner

    def train_hooks(self, value: Any, ctx: SpendContext) -> list[TrainHook]:
        return []


def _flat_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _parse_number(text: str, path: str) -> Any:
    """An int or float as YAML reads it, or as Python does where YAML 1.1 leaves text (1e-3)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            value = float(text)
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(path, f"cannot read {text!r} as a number")
    return value

