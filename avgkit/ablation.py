"""Ablations as a workflow: sweeps over recipe overrides, and comparisons of run directories.

A sweep is a recipe plus a grid ``{"conditioner": ["adaln", "adaln-single"], ...}``;
each point is the recipe with those overrides, named ``<recipe>--<key>-<value>...``
and written to its own run directory under ``<out>/``. ``compare_runs`` reads what the
runs recorded (resolved recipe, metrics.jsonl, eval.json) and puts them side by side.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from avgkit.errors import AvgkitError
from avgkit.io import atomic_write
from avgkit.recipe import Recipe, apply_overrides, find_recipe, read_recipe, validate_recipe
from avgkit.runs.layout import RunDir


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["conditioner=adaln,adaln-single", "train.lr=1e-3,2e-3"]`` -> key -> values."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise AvgkitError(f"sweep axis {item!r} is not key=v1,v2,... (e.g. conditioner=adaln,adaln-single)")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def sweep_recipes(recipe: str, grid: dict[str, list[str]], fixed: Sequence[str] = (), out: str | None = None) -> list[Recipe]:
    """One validated recipe per grid point (cartesian product), each with its own run directory."""
    path = find_recipe(recipe)
    raw = read_recipe(path)
    if not isinstance(raw, dict):
        raise AvgkitError(f"{path}: a recipe must be a YAML mapping")
    base_name = raw.get("name", path.stem)
    root = Path(out or f"runs/{base_name}-sweep")
    keys = list(grid)
    recipes = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        name = "--".join([base_name] + [_slug(f"{k.split('.')[-1]}-{v}") for k, v in zip(keys, values, strict=True)])
        overrides = [*fixed, *point, f"name={name}", f"output_dir={root / name}"]
        recipes.append(validate_recipe(apply_overrides(raw, overrides), f"{path} with {' '.join(point)}"))
    return recipes


# ----------------------------------------------------------------------------- compare
def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """What one run recorded: parameters, final loss, throughput, evaluation metrics."""
    run = Path(run_dir)
    recipe_file = RunDir(run).recipe
    if not recipe_file.exists():
        raise AvgkitError(f"{run} is not a run directory (no recipe.yaml); pass the folder `avgkit train` wrote")
    recipe = validate_recipe(yaml.safe_load(recipe_file.read_text()), str(recipe_file))
    from avgkit.build import build, parameter_counts
    from avgkit.train.report import read_metrics

    counts = parameter_counts(build(recipe, device="meta"))
    records = [r for r in read_metrics(RunDir(run).metrics) if "loss" in r]
    tail = records[-max(1, len(records) // 10):] if records else []
    speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    row: dict[str, Any] = {
        "run": run.name,
        "path": str(run),
        "conditioner": recipe.conditioner.name + "".join(f" {k}={v}" for k, v in recipe.conditioner.options.items()
                                                         if k not in ("num_classes",)),
        "backbone": f"{recipe.backbone.name}:{recipe.backbone.preset or ''}".rstrip(":"),
        "parameters": counts["total"],
        "non_embedding": counts["non_embedding"],
        "steps": records[-1]["step"] if records else 0,
        "final_loss": statistics.fmean(r["loss"] for r in tail) if tail else None,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
    }
    eval_file = RunDir(run).eval
    if eval_file.exists():
        data = json.loads(eval_file.read_text())
        metrics = data.get("metrics", data)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = value
    row["_records"] = records
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def comparison_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    base = ["run", "conditioner", "parameters", "non_embedding", "steps", "final_loss", "tokens_per_s"]
    extra = sorted({k for r in rows for k in r if k not in base and not k.startswith("_") and k not in ("path", "backbone")})
    cols = base + extra
    return cols, [[_fmt(r.get(c)) for c in cols] for r in rows]


def markdown_table(cols: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def plot_losses(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        recs = r["_records"]
        if recs:
            ax.plot([x["step"] for x in recs], [x["loss"] for x in recs], lw=1.2, label=r["run"])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.95)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Summaries of ``run_dirs``, written to ``out`` as compare.json, compare.md and losses.png."""
    if not run_dirs:
        raise AvgkitError("give at least one run directory to compare")
    rows = [summarize_run(d) for d in run_dirs]
    cols, body = comparison_table(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_losses(rows, out / "losses.png")
    md = markdown_table(cols, body) + f"\n![loss curves]({plot.name})\n"
    (out / "compare.md").write_text(md)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (out / "compare.json").write_text(json.dumps(clean, indent=2))
    return {"columns": cols, "rows": body, "plot": str(plot), "markdown": str(out / "compare.md")}
