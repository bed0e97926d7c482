"""Module boundaries, read from the source: no entry point imports another (what two of them
share lives in a module of its own, such as `lth_core.inputs`), and the core imports neither
Ray, MLflow nor the packages built on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The commands a user runs; each is found again below from its `__main__` guard or file name.
ENTRY_POINTS = {"lth_core.cli", "lth_core.__main__", "sweeps.full_grid", "sweeps.optuna_search",
                "dashboards.report", "benchmarks.throughput", "benchmarks.overhead", "benchmarks.gpu"}
# A package's `__main__.py` only runs the command its package defines.
SHIMS = {"lth_core.__main__": "lth_core.cli"}
CORE_MAY_NOT_IMPORT = ("ray", "mlflow", "optuna", "tracking", "trainables", "sweeps", "dashboards", "benchmarks")


def source_files() -> dict[str, Path]:
    """module name -> file, for every Python file of the project outside the tests."""
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] == "tests" or any(p.startswith(".") for p in relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(module: str, path: Path) -> set[str]:
    """Every module `path` imports (relative imports resolved), with each of its parents, and for
    `from X import Y` also X.Y (Y may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return found


def entry_points(files: dict[str, Path]) -> set[str]:
    return {m for m, p in files.items()
            if p.name == "__main__.py" or '__name__ == "__main__"' in p.read_text(encoding="utf-8")} | {"lth_core.cli"}


def test_every_command_is_found_as_an_entry_point():
    found = entry_points(source_files())
    assert ENTRY_POINTS <= found, ENTRY_POINTS - found


def test_no_entry_point_imports_another():
    files = source_files()
    entries = entry_points(files)
    crossings = [f"{module} imports {target}" for module, path in files.items()
                 for target in sorted(imported_modules(module, path) & entries)
                 if target != module and SHIMS.get(module) != target]
    assert crossings == []


def test_the_scan_sees_an_entry_point_imported(tmp_path):
    """The scan itself: the import that was ruled out (the sweep pre-flight taking the core CLI's
    helpers) is found in every spelling."""
    for line in ("from lth_core.cli import probe_store", "import lth_core.cli", "from lth_core import cli",
                 "from sweeps import full_grid", "from .report import main"):
        path = tmp_path / "mod.py"
        path.write_text(line + "\n")
        module = "dashboards.mod" if line.startswith("from .") else "sweeps.preflight"
        assert imported_modules(module, path) & ENTRY_POINTS, line


def test_the_core_imports_neither_ray_mlflow_nor_the_packages_on_top():
    files = source_files()
    found = [f"{module} imports {target}" for module, path in files.items() if module.startswith("lth_core")
             for target in sorted(imported_modules(module, path)) if target.split(".")[0] in CORE_MAY_NOT_IMPORT]
    assert found == []
