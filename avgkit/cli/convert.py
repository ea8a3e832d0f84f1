"""``avgkit convert``: an external checkpoint -> an avgkit checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from avgkit.cli.base import app
from avgkit.runs.layout import MODEL_FILE

_HELP = """Convert an official checkpoint into an avgkit checkpoint directory.

The file (safetensors, or a .pt/.pth/.bin read with the safe loader: tensors only,
nothing executed) is split among the recipe's components by their plugins. The output
holds recipe.yaml, model.safetensors, tokenizer.safetensors (when the file carries
tokenizer weights, or --tokenizer-weights is given) and convert.json; `avgkit sample`
and avgkit.api.load read it. Keys no component uses, missing keys and mis-shaped keys
are reported by name. Trailing key=value arguments override the recipe; a format may
imply options (--format aim: backbone.positions=reference, the released sampler's
convention), noted in convert.json. Official files known by name are checked against
their published SHA-256.

Examples:

  avgkit convert aim_b.safetensors --format aim --recipe aim-b --out ckpt/aim-b

  avgkit convert aim_l.safetensors --format aim --recipe aim-l --out ckpt/aim-l --tokenizer-weights vq_ds16_c2i.pt

  avgkit convert vq_ds16_c2i.pt --format llamagen-vq --recipe aim-b --out ckpt/vq16
"""


@app.command("convert", help=_HELP, no_args_is_help=True)
def convert_cmd(
    source_file: Path = typer.Argument(..., help="the external checkpoint file"),
    overrides: Optional[list[str]] = typer.Argument(None, help="recipe overrides, e.g. backbone.positions=reference"),
    fmt: str = typer.Option(..., "--format", help="checkpoint format, e.g. aim or llamagen-vq"),
    recipe: str = typer.Option(..., "--recipe", help="recipe name or path describing the model"),
    out: Path = typer.Option(..., "--out", help="output directory (must not exist)"),
    tokenizer_weights: Optional[Path] = typer.Option(
        None, "--tokenizer-weights", help="tokenizer weights file to include (e.g. vq_ds16_c2i.pt)"),
    tokenizer_format: Optional[str] = typer.Option(
        None, "--tokenizer-format", help="format of --tokenizer-weights (default: the tokenizer's name)"),
    skip_hash_check: bool = typer.Option(
        False, "--skip-hash-check", help="convert an official file (known by name) whose SHA-256 differs"),
) -> None:
    from avgkit.convert import convert_checkpoint
    from avgkit.errors import AvgkitError, did_you_mean
    from avgkit.plugins import get_manager

    formats = get_manager().checkpoint_formats()
    if fmt not in formats:
        raise AvgkitError(
            f"no installed plugin converts format {fmt!r}{did_you_mean(fmt, formats)}; installed formats: "
            f"{', '.join(formats) or 'none'} (`avgkit plugins` lists the plugins)"
        )
    target = convert_checkpoint(source_file, fmt, recipe, out, tokenizer_weights=tokenizer_weights,
                                tokenizer_format=tokenizer_format, overrides=overrides or [],
                                skip_hash_check=skip_hash_check)
    written = ", ".join(sorted(p.name for p in target.iterdir()))
    typer.echo(f"wrote {target}: {written}")
    if (target / MODEL_FILE).exists():
        typer.echo(f"sample with: avgkit sample {target} --classes 0-7 --per-class 4")
