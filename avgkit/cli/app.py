"""The ``avgkit`` command line (typer).

Every user error is one line on stderr and exit code 2; set ``AVGKIT_DEBUG=1`` for
the traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from avgkit.cli.base import app, recipes_app
from avgkit.errors import AvgkitError, did_you_mean


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# ----------------------------------------------------------------------------- plugins
@app.command("plugins")
def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List installed plugins, their versions and what each registers.

    Examples:

      avgkit plugins

      AVGKIT_DISABLE_PLUGINS=transformer avgkit plugins --json
    """
    from avgkit.plugins import get_manager

    infos = list(get_manager().infos.values())
    if as_json:
        echo_json([vars(i) for i in infos])
        return
    for i in infos:
        kind = "built-in" if i.builtin else i.module
        typer.echo(f"{i.name} {i.version}  (api {i.api_version}, {kind})")
        for role, names in i.registers.items():
            typer.echo(f"    {role}: {', '.join(names)}")


# ----------------------------------------------------------------------------- ls
def _role(kind: str) -> str:
    from avgkit.registry import LISTED, PLURAL

    role = PLURAL.get(kind, kind)
    if role not in LISTED:
        raise AvgkitError(f"unknown component kind {kind!r}{did_you_mean(kind, PLURAL)}")
    return role


def _options(spec: Any) -> list[dict[str, Any]]:
    from avgkit.recipe_schema import type_name as _type_name

    out = []
    for name, field in spec.config.model_fields.items():
        default = field.default if not field.is_required() else "(required)"
        out.append({"name": name, "type": _type_name(field.annotation), "default": default,
                    "help": field.description or ""})
    return out


@app.command("ls")
def ls_cmd(
    kind: str = typer.Argument(..., help="backbones | tokenizers | conditioners | samplers | loggers"),
    options: bool = typer.Option(False, "--options", help="show each component's options"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List registered components of one kind, with presets (and options).

    Examples:

      avgkit ls backbones

      avgkit ls conditioners --options

      avgkit ls loggers
    """
    from avgkit.plugins import get_registry

    specs = get_registry().specs(_role(kind))
    if as_json:
        echo_json([{"name": s.name, "plugin": s.plugin, "description": s.description,
                    "presets": dict(s.presets), **({"options": _options(s)} if options else {})} for s in specs])
        return
    for s in specs:
        presets = ", ".join(s.presets) or "-"
        typer.echo(f"{s.name:<16} [{s.plugin}] {s.description}")
        typer.echo(f"{'':<16} presets: {presets}")
        if options:
            for o in _options(s):
                typer.echo(f"{'':<18}{o['name']} ({o['type']}, default {o['default']!r}) {o['help']}")


# ----------------------------------------------------------------------------- recipes
@recipes_app.command("ls")
def recipes_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List packaged recipes (avgkit's and every plugin's).

    Examples:

      avgkit recipes ls

      avgkit recipes ls --json
    """
    from avgkit.recipe import packaged_recipes, read_recipe

    found = packaged_recipes()
    rows = []
    for name, path in found.items():
        raw = read_recipe(path)
        rows.append({"name": name, "path": str(path), "description": (raw or {}).get("description", "")})
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']:<24} {r['description']}")


@recipes_app.command("show")
def recipes_show(
    recipe: str = typer.Argument(..., help="recipe name or path"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
    as_written: bool = typer.Option(False, "--as-written",
                                    help="components as the recipe writes them, without their preset and defaults"),
) -> None:
    """Print a recipe resolved (bases merged, overrides applied) and validated: every key, nulls
    included, and each component's options as its preset and defaults fill them.

    Examples:

      avgkit recipes show digits

      avgkit recipes show aim-l train.steps=10 --as-written
    """
    import yaml

    from avgkit.recipe import load_recipe, resolved_dict

    r = load_recipe(recipe, overrides or [])
    text = yaml.safe_dump(resolved_dict(r, components=not as_written), sort_keys=False)
    typer.echo(text, nl=False)


@recipes_app.command("schema")
def recipes_schema(
    section: Optional[str] = typer.Argument(None, help="recipe | components | data | train | eval (default: all)"),
) -> None:
    """Every key a recipe may hold, with its type, default and meaning (Markdown; docs/recipe-schema.md
    is this command's output).

    Examples:

      avgkit recipes schema train

      avgkit recipes schema > docs/recipe-schema.md
    """
    from avgkit.recipe_schema import render

    typer.echo(render(section), nl=False)


@recipes_app.command("cp")
def recipes_cp(recipe: str = typer.Argument(...), dest: Path = typer.Argument(..., help="file or folder")) -> None:
    """Copy a packaged recipe to edit it.

    Examples:

      avgkit recipes cp aim-b my-aim-b.yaml

      avgkit recipes cp digits configs/
    """
    from avgkit.recipe import find_recipe

    src = find_recipe(recipe)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists():
        raise AvgkitError(f"{target} already exists; choose another destination or delete it first")
    shutil.copyfile(src, target)
    typer.echo(f"copied {src} -> {target}")


@recipes_app.command("validate")
def recipes_validate(
    recipes: list[str] = typer.Argument(..., help="recipe names or paths"),
) -> None:
    """Validate recipes: schema, component names and options, and component agreement.

    Examples:

      avgkit recipes validate my-aim-b.yaml

      avgkit recipes validate digits aim-b aim-l
    """
    from avgkit.build import build
    from avgkit.recipe import load_recipe

    failed = 0
    for name in recipes:  # every file is checked, not only up to the first bad one
        try:
            build(load_recipe(name), device="meta")
        except AvgkitError as err:
            failed += 1
            typer.echo(f"FAIL  {name}: {err}", err=True)
            continue
        typer.echo(f"ok    {name}")
    if failed:
        raise AvgkitError(f"{failed} of {len(recipes)} recipe(s) failed validation")


# ----------------------------------------------------------------------------- train
def _fmt(n: int) -> str:
    return f"{n:,} ({n / 1e6:.1f}M)" if n >= 100_000 else f"{n:,} ({n / 1e3:.1f}K)"


@app.command(
    "train",
    context_settings={"allow_extra_args": True},
)
def train_cmd(
    recipe: str = typer.Argument(..., help="recipe name (see `avgkit recipes ls`) or path"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. train.steps=100"),
    dry_run: bool = typer.Option(False, "--dry-run", help="resolve, build on the meta device, print counts; no data"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run directory's last complete checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="with --dry-run: machine-readable output"),
) -> None:
    """Train a recipe (or inspect it with --dry-run).

    Examples:

      avgkit train digits

      avgkit train aim-b --dry-run

      avgkit train digits train.steps=200 conditioner=adaln-single output_dir=runs/digits-single

      avgkit train digits --resume

      torchrun --nproc_per_node 8 -m avgkit.train aim-b
    """
    from avgkit.build import build, parameter_counts
    from avgkit.recipe import load_recipe

    r = load_recipe(recipe, overrides or [])
    if dry_run:
        comps = build(r, device="meta")
        counts = parameter_counts(comps)
        if as_json:
            echo_json({"recipe": r.to_dict(), "parameters": counts})
            return
        typer.echo(r.to_yaml(), nl=False)
        typer.echo("---")
        typer.echo(f"parameters (backbone + conditioner): {_fmt(counts['total'])}")
        typer.echo(f"  non-embedding:                      {_fmt(counts['non_embedding'])}")
        typer.echo(f"  backbone {_fmt(counts['backbone'])}, conditioner {_fmt(counts['conditioner'])}")
        typer.echo(f"tokenizer (not counted above):        {_fmt(counts['tokenizer'])}")
        return
    from avgkit.train.pipeline import run_recipe

    run_recipe(r, resume=resume)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning AvgkitError into one line and exit code 2."""
    try:
        from avgkit.plugins import get_manager

        get_manager().register_commands(app)
        app(args=argv, prog_name="avgkit")
    except AvgkitError as err:
        from avgkit.runtime.stop import Interrupted

        if os.environ.get("AVGKIT_DEBUG"):
            raise
        if isinstance(err, Interrupted):  # stopped on a signal after saving its work
            typer.echo(str(err), err=True)
            sys.exit(err.exit_code)
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


# subcommands defined in their own modules register themselves on `app`
from avgkit.cli import convert as _convert_cmds, sampling as _sampling_cmds, workflow as _workflow_cmds  # noqa: E402,F401,I001
