"""Running ``avgkit`` commands inside a test process."""

from __future__ import annotations

import sys
from typing import Any


def run_cli(capsys: Any, *args: str) -> tuple[int, str]:
    """``avgkit ARGS`` through the entry point, which turns errors into one line: (exit code, stderr).

    ``capsys`` is pytest's fixture; its captured output is consumed.
    """
    from avgkit.cli.app import main

    old, sys.argv = sys.argv, ["avgkit", *args]
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def invoke_ok(*args: str) -> Any:
    """``avgkit ARGS`` through typer's test runner; fails the test unless it exits 0. Returns the result."""
    from typer.testing import CliRunner

    from avgkit.cli.app import app

    result = CliRunner().invoke(app, list(args), prog_name="avgkit")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result
