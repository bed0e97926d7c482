"""How a plug-in package (`lth_core.tweaks`, `lth_core.mask_sources`) loads the modules it lists:
each module defines one plug-in under an agreed name (TWEAK, SOURCE), and names are unique."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any


def load(package: str, modules: Sequence[str], attribute: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The plug-ins in the order listed, and the same by name."""
    plugins = tuple(getattr(importlib.import_module(f"{package}.{module}"), attribute) for module in modules)
    by_name = {plugin.name: plugin for plugin in plugins}
    if len(by_name) != len(plugins):
        repeated = sorted({p.name for p in plugins if sum(q.name == p.name for q in plugins) > 1})
        raise ImportError(f"{package}: more than one module defines {', '.join(repeated)}")
    return plugins, by_name
