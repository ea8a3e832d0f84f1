"""The ``avgkit`` typer application object, which every command module registers on.

Command modules import ``app`` from here; :mod:`avgkit.cli.app` imports them all and
holds the entry point.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="avgkit",
    help="Autoregressive visual generation: train, sample and evaluate recipes built from plugins.\n\n"
    "Examples:\n\n"
    "  avgkit recipes ls\n\n"
    "  avgkit train digits\n\n"
    "  avgkit train aim-b --dry-run\n\n"
    "  avgkit train digits train.steps=200 conditioner=adaln-single",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
recipes_app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
