"""Shared by the text plugin's tests: a tiny captioned image folder, avgkit commands run in the test."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def captioned_folder(root, captions):
    """8x8 grey images in two sub-folders, named by a ``captions.jsonl``: dark or light by the caption's
    words, every other row black for "stripes"."""
    from PIL import Image

    rows = []
    for i, caption in enumerate(captions):
        path = f"set{i % 2}/{i:03d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((8, 8), 40 if "dark" in caption else 210, dtype=np.uint8)
        if "stripes" in caption:
            pixels[::2] = 0
        Image.fromarray(pixels).save(root / path)
        rows.append(json.dumps({"path": path, "caption": caption}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def tiny_text_recipe(tmp, name: str, conditioner: dict, per_class: int = 2) -> dict:
    """A recipe training a tiny mamba2 for two steps on ``tmp/pics`` (8x8 images, toy tokenizer) on the CPU."""
    return {
        "name": name,
        "tokenizer": {"name": "toy-patch", "image_size": 8, "patch": 2, "levels": 16},
        "backbone": {"name": "mamba2", "preset": "tiny", "d_model": 32, "headdim": 16},
        "conditioner": {"name": "text", **conditioner},
        "sampler": {"name": "ar", "cfg_scale": 2.0},
        "data": {"source": str(tmp / "pics"), "store": str(tmp / "codes.zarr"), "val_source": None},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, "ckpt_every": 2, "sample_every": 2,
                  "sample_classes": 2, "sample_per_class": per_class, "device": "cpu", "precision": "fp32"},
        "eval": {"samples_per_class": per_class, "batch_size": 8, "grid_classes": 3},
        "output_dir": str(tmp / "run"),
    }


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
