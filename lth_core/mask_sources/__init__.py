"""Mask sources: one module each (the contract: `lth_core.mask_sources.base`), listed once in
`MODULES`. `pruning.method` names one; the CLI's choices, the sweep's `prune_methods` axis (one
Optuna study per source) and the docs table are derived from the registry.
"""

from __future__ import annotations

from lth_core import registry
from lth_core.mask_sources.base import MaskRequest, MaskSource

__all__ = ["MODULES", "REGISTRY", "SOURCES", "MaskRequest", "MaskSource", "docs_table"]

MODULES = (  # one line per source: the module in this package that defines its SOURCE
    "imp",
    "omp",
    "random",
    "erk",
    "snip",
    "grasp",
    "synflow",
)
REGISTRY: tuple[MaskSource, ...]
SOURCES: dict[str, MaskSource]
REGISTRY, SOURCES = registry.load(__name__, MODULES, "SOURCE")


def docs_table() -> str:
    """The sources as a Markdown table (docs/mask_sources.md holds it; a test keeps it current)."""
    rows = ["| method | scores | needs data | what it does | reference |", "|---|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.weights.replace('_', ' ')} weights | {'yes' if s.uses_data else 'no'} | "
             f"{s.summary} | {s.reference} |" for s in REGISTRY]
    return "\n".join(rows)
