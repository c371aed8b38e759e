"""pyproject.toml matches the code: every third-party import is declared, every core dependency is used, and
modules of optional extras are imported only inside functions (so the package imports without them)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("geodino", "heads", "training", "workflows")
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "distributed": "dask", "sklearn": "scikit-learn"}


def _dist(module: str) -> str:
    return DISTRIBUTIONS.get(module, module).lower().replace("_", "-")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports() -> dict[str, dict[str, bool]]:
    """Third-party top-level module -> {file: imported at module level?}."""
    found: dict[str, dict[str, bool]] = {}
    for wing in WINGS:
        for path in (ROOT / wing).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            # Runs at import: module-level statements and module-level try blocks (not `if TYPE_CHECKING:`).
            top_level = {id(n) for n in tree.body}
            top_level |= {id(b) for n in tree.body if isinstance(n, ast.Try) for b in n.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("geodino", "__future__"):
                        continue
                    module_level = id(node) in top_level
                    per_file = found.setdefault(top, {})
                    per_file[str(path.relative_to(ROOT))] = (
                        per_file.get(str(path.relative_to(ROOT)), False) or module_level
                    )
    return found


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_import_is_declared_and_optional_ones_are_lazy() -> None:
    project = _project()
    core = _requirement_names(project["dependencies"])
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items() if k not in ("dev", "all")}
    optional = set().union(*extras.values())
    for module, files in _imports().items():
        dist = _dist(module)
        assert dist in core | optional, (
            f"{module} (distribution {dist}) is imported in {sorted(files)} but not declared"
        )
        if dist not in core:
            eager = sorted(f for f, module_level in files.items() if module_level)
            assert not eager, f"{module} is optional (an extra) but imported at module level in {eager}"


def test_every_core_dependency_is_imported() -> None:
    used = {_dist(m) for m in _imports()}
    unused = sorted(_requirement_names(_project()["dependencies"]) - used)
    assert not unused, f"declared in pyproject.toml but imported nowhere in the package: {unused}"
