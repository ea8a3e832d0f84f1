"""The core's layers (docs/architecture.md): no module imports one on a higher floor.

Imports inside functions count too: a lazy import is still a dependency. The one
intended exception is the built-in registration (``avgkit.builtin``), which the plugin
manager loads like any plugin and which imports the components it registers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "avgkit"

#: bottom to top; a module belongs to the first floor one of whose prefixes it has
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("avgkit.errors", "avgkit.io", "avgkit.interfaces", "avgkit.hookspecs", "avgkit")),
    ("shared services", ("avgkit.registry", "avgkit.state_dicts", "avgkit.runtime")),
    ("plugins and recipes", ("avgkit.plugins", "avgkit.recipe", "avgkit.recipe_schema", "avgkit.loggers")),
    ("components and data", ("avgkit.build", "avgkit.data")),
    ("runs", ("avgkit.runs",)),
    ("sampling and evaluation", ("avgkit.sample", "avgkit.eval")),
    ("testing kit", ("avgkit.testing",)),
    ("training", ("avgkit.train",)),
    ("facades", ("avgkit.api", "avgkit.convert", "avgkit.ablation", "avgkit.demos")),
    ("command line", ("avgkit.cli", "avgkit.__main__")),
]
REGISTRATION = "avgkit.builtin"
#: within a floor, these may not import each other
APART = [("avgkit.sample", "avgkit.eval")]


def floor_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best is not None, f"{module} is on no floor: add it to FLOORS and docs/architecture.md"
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def avgkit_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "avgkit"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "avgkit":
                # ``from avgkit.runs import checkpoint`` imports avgkit.runs.checkpoint
                found |= {f"{node.module}.{a.name}" if (PACKAGE.parent / (node.module.replace(".", "/") + "/" + a.name
                                                                              + ".py")).is_file() else node.module
                          for a in node.names}
    return found


EDGES = sorted((module_name(p), imported) for p in PACKAGE.rglob("*.py") for imported in avgkit_imports(p))


def test_no_import_runs_up_the_floors() -> None:
    upward = [f"{a} ({FLOORS[floor_of(a)][0]}) imports {b} ({FLOORS[floor_of(b)][0]})"
              for a, b in EDGES if REGISTRATION not in (a, b) and floor_of(b) > floor_of(a)]
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("one, other", APART)
def test_sampling_and_evaluation_stay_apart(one: str, other: str) -> None:
    crossing = [f"{a} imports {b}" for a, b in EDGES
                if (a.startswith(one) and b.startswith(other)) or (a.startswith(other) and b.startswith(one))]
    assert not crossing, crossing


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    assert floor_of("avgkit.sample.job") < floor_of("avgkit.train.loop") < floor_of("avgkit.cli.app")
    assert floor_of("avgkit.runs.loading") < floor_of("avgkit.api")


def test_every_avgkit_import_names_a_module_that_exists() -> None:
    """A lazy import of a moved module fails only when its code runs; this finds it at once."""
    def exists(module: str) -> bool:
        path = PACKAGE.parent / module.replace(".", "/")
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    missing = sorted({f"{a} imports {b}" for a, b in EDGES if not exists(b)})
    assert not missing, missing
