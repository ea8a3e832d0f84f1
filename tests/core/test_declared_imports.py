"""Every package imports only what its pyproject declares (the standard library and avgkit aside).

An import that works in the development environment because something else pulled the
package in fails for a user who installs the wheel alone. An import inside a
``try: ... except ImportError`` (or ``Exception``) is optional by construction and may
stay undeclared.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [(ROOT / "avgkit", ROOT / "pyproject.toml")] + [
    (pkg, project / "pyproject.toml")
    for project in sorted((ROOT / "plugins").iterdir()) if (project / "pyproject.toml").is_file()
    for pkg in sorted(project.glob("avgkit_*")) if pkg.is_dir()
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_norm(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a try whose handlers catch ImportError, ModuleNotFoundError or Exception."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
                if handler.type is None or any(getattr(n, "id", "") in ("ImportError", "ModuleNotFoundError",
                                                                         "Exception") for n in names):
                    return True
        node = parent
    return False


def imports(package: Path) -> dict[str, str]:
    """Top-level module -> first file that imports it unconditionally (absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _optional(node, parents):
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(package.parent)))
    return found


@pytest.mark.parametrize("package, pyproject", PACKAGES, ids=[p.name for p, _ in PACKAGES])
def test_imports_are_declared(package: Path, pyproject: Path) -> None:
    allowed = declared(pyproject) | {"avgkit"}
    providers = metadata.packages_distributions()
    missing = []
    for module, where in imports(package).items():
        if module in sys.stdlib_module_names or module in (package.name, "avgkit", "__future__"):
            continue
        dists = {_norm(d) for d in providers.get(module, [module])}
        if not dists & allowed:
            missing.append(f"{module} ({where}; from {', '.join(sorted(dists))})")
    assert not missing, f"{pyproject.relative_to(ROOT)} does not declare: {'; '.join(missing)}"


def test_the_check_sees_an_undeclared_import(tmp_path: Path) -> None:
    pkg = tmp_path / "avgkit_demo"
    pkg.mkdir()
    (pkg / "m.py").write_text("import json\nimport yaml\ntry:\n    import tqdm\nexcept ImportError:\n    tqdm = None\n")
    assert set(imports(pkg)) == {"json", "yaml"}
