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
    "  avgkit train digits train.steps=200 conditioner=adaln-single\n\n"
    "  avgkit --version",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def versions() -> dict[str, str]:
    """avgkit, its plugin API, each installed plugin, torch and triton, read from package metadata.

    Nothing is imported: ``avgkit --version`` stays fast and works with a broken plugin.
    """
    from importlib import metadata

    from avgkit import __version__
    from avgkit.hookspecs import API_VERSION

    def version_of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = {"avgkit": __version__, "plugin API": API_VERSION}
    for ep in sorted(metadata.entry_points(group="avgkit"), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        out[f"plugin {ep.name}"] = f"{dist.version if dist is not None else '?'} ({ep.value})"
    out["torch"] = version_of("torch")
    out["triton"] = version_of("triton")
    return out


def _version_callback(value: bool) -> None:
    if value:
        for name, version in versions().items():
            typer.echo(f"{name}: {version}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version_callback,
        help="print the versions of avgkit, its plugins, torch and triton, and exit",
    ),
) -> None:
    pass


recipes_app = typer.Typer(
    help="List, show, copy, validate and describe recipes.\n\n"
    "Examples:\n\n"
    "  avgkit recipes ls\n\n"
    "  avgkit recipes show digits train.steps=100\n\n"
    "  avgkit recipes schema train",
    no_args_is_help=True,
)
app.add_typer(recipes_app, name="recipes")
