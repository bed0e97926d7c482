"""Activation sparsity: the fraction of activation outputs that are (near) zero (Table A1).

A ReLU clamps every negative input to exactly zero, and a zero activation passes no
gradient; the paper's argument for smooth activations is that sparse ReLU nets have many
of them. Forward hooks on the activation modules count outputs with |a| <= threshold,
every call of a module counted (a module used twice in `forward` counts twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..tweaks.activations import ACTIVATION_TYPES
from .hessian import Batch, eval_mode, model_device


def is_activation(module: nn.Module, activation_types: Sequence[type[nn.Module]] | None = None) -> bool:
    """By default one of the activations the activation tweak can put into a model (or a subclass)."""
    return isinstance(module, tuple(activation_types) if activation_types is not None else ACTIVATION_TYPES)


def stage_of(module_name: str) -> str:
    """The top-level child a module lives under: 'layer2.1.relu' -> 'layer2' (ResNet stages,
    'stem'; 'features' for VGG)."""
    return module_name.split(".", 1)[0] or "<model>"


@dataclass(frozen=True)
class Count:
    near_zero: int
    total: int

    @property
    def fraction(self) -> float:
        return self.near_zero / self.total if self.total else 0.0

    def __add__(self, other: Count) -> Count:
        return Count(self.near_zero + other.near_zero, self.total + other.total)


@dataclass(frozen=True)
class ActivationSparsity:
    """Counts per activation module (by module name, in model order) and per stage."""

    threshold: float
    layers: dict[str, Count]
    stages: dict[str, Count]

    @property
    def overall(self) -> float:
        return sum(self.stages.values(), Count(0, 0)).fraction

    def to_rows(self) -> list[dict[str, object]]:
        """One row per layer, then per stage, then the overall count: a flat table."""
        rows: list[dict[str, object]] = []
        for kind, counts in (("layer", self.layers), ("stage", self.stages),
                             ("overall", {"overall": sum(self.stages.values(), Count(0, 0))})):
            rows += [{"kind": kind, "name": name, "fraction": c.fraction, "near_zero": c.near_zero,
                      "total": c.total, "threshold": self.threshold} for name, c in counts.items()]
        return rows

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary: fractions per stage and per layer (with element counts)."""
        return {"threshold": self.threshold, "overall": self.overall,
                "stages": {n: c.fraction for n, c in self.stages.items()},
                "layers": {n: {"fraction": c.fraction, "count": c.total} for n, c in self.layers.items()}}


@torch.no_grad()
def activation_sparsity(model: nn.Module, batches: Iterable[Batch], threshold: float = 1e-3,
                        activation_types: Sequence[type[nn.Module]] | None = None,
                        stage_fn: Callable[[str], str] = stage_of) -> ActivationSparsity:
    """Fraction of activation outputs with |a| <= `threshold` over `batches`, in eval mode.

    The paper's Table A1 uses threshold 1e-2 on the test set.
    """
    device = model_device(model)
    sites = [(name, m) for name, m in model.named_modules() if is_activation(m, activation_types)]
    if not sites:
        raise ValueError("the model has no activation module this analysis knows; a new activation goes into "
                         "lth_core/tweaks/activations.py (or pass activation_types)")
    # Counts stay on the device until the end: no host sync per hook call.
    near_zero = {name: torch.zeros((), dtype=torch.int64, device=device) for name, _ in sites}
    total = dict.fromkeys(near_zero, 0)

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            near_zero[name] += (output.abs() <= threshold).sum()
            total[name] += output.numel()
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in sites]
    try:
        with eval_mode(model):
            for x, _ in batches:
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    layers = {name: Count(int(near_zero[name]), total[name]) for name, _ in sites}
    stages: dict[str, Count] = {}
    for name, c in layers.items():
        stage = stage_fn(name)
        stages[stage] = stages.get(stage, Count(0, 0)) + c
    return ActivationSparsity(threshold, layers, stages)


def format_table(results: dict[str, ActivationSparsity]) -> str:
    """Table-A1-style text: a caption, then one row per stage (and 'overall'), one column per
    result, in percent."""
    stages = list(dict.fromkeys(s for r in results.values() for s in r.stages))
    header = ["stage", *results]
    body = [[s, *(f"{100 * r.stages[s].fraction:.2f}" if s in r.stages else "-" for r in results.values())]
            for s in stages]
    body.append(["overall", *(f"{100 * r.overall:.2f}" for r in results.values())])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    thresholds = ", ".join(f"{t:g}" for t in sorted({r.threshold for r in results.values()}))
    caption = f"% of activations with |a| <= {thresholds}"
    return "\n".join([caption, line(header), rule, *(line(row) for row in body)])
