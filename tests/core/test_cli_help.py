"""Every avgkit command's --help shows at least one example of running it."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from avgkit.cli.app import app


def _commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        callback = command.callback
        if callback is not None and not callback.__module__.startswith("avgkit."):
            continue  # a plugin's own command (through avgkit_register_commands)
        yield (*path, name), command
        if hasattr(command, "commands"):  # a group
            yield from _commands(command, (*path, name))


def test_every_command_help_has_an_example():
    root = typer.main.get_command(app)
    found = dict(_commands(root))
    assert {("train",), ("sample",), ("recipes", "schema"), ("recipes", "show"), ("ls",), ("plugins",)} <= set(found)
    runner = CliRunner()
    missing = []
    for path, _ in [((), root), *found.items()]:
        result = runner.invoke(app, [*path, "--help"], prog_name="avgkit")
        assert result.exit_code == 0, f"avgkit {' '.join(path)} --help failed: {result.output}"
        text = result.output
        example = "Example" in text and any(
            line.strip().startswith(("avgkit " + " ".join(path), "torchrun ")) and len(line.split()) > len(path)
            for line in text.splitlines()
        )
        if not example:
            missing.append("avgkit " + " ".join(path))
    assert not missing, f"--help without an example: {', '.join(missing)}"
