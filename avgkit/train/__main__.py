"""``python -m avgkit.train RECIPE [key=value ...] [--resume]`` (also under ``torchrun``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from avgkit.cli.app import main as cli_main

    cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
