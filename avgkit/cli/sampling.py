"""``avgkit sample``: images from a training run or a converted checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from avgkit.cli.base import app
from avgkit.errors import AvgkitError

if TYPE_CHECKING:
    import numpy as np

    from avgkit.api import Generator

_HELP = """Sample images from a run directory or an `avgkit convert` output.

Writes individual PNGs, a labelled grid.png, an ADM-format samples.npz (arr_0 uint8
N x H x W x 3, arr_1 labels) and sampling.json (every setting, the checkpoint hash,
the avgkit version, images/s). Image i depends only on (seed, i, its class). Big jobs
are written in shards: rerun the same command to resume, with another --batch-size if
need be (the job keeps its shard size and decode width, so its images stay the same);
under torchrun each process takes its own shards.

Sampler options left unset keep the recipe's values (its `sampler:` section). Any
option of the sampler goes in as `-o key=value` (`avgkit ls samplers --options` lists
them); --cfg, --top-k and the other flags below are shortcuts for the built-in sampler's.
`--sampler NAME` draws with another registered sampler, from its own defaults.

A text-conditioned run samples prompts instead of classes: --prompt TEXT (repeatable)
and/or --prompts FILE (one prompt a line); --per-class images of each prompt, the
labels are prompt indices, grid.png has a row per prompt with the prompt beside it,
and sampling.json lists the prompts.

Examples:

  avgkit sample runs/digits --classes 0-9 --per-class 8

  avgkit sample runs/text-digits --prompt forty-two --prompt "fifty-six" --per-class 8 --cfg 3

  avgkit sample runs/captions --prompts prompts.txt --per-class 4

  avgkit sample ckpt/aim-b --classes 207,360 --per-class 4 --cfg 4 --top-k 600 --out samples/dogs

  avgkit sample runs/digits --classes 3 --per-class 16 -o compile=true -o cfg_schedule=linear

  torchrun --nproc_per_node 8 -m avgkit sample ckpt/aim-xl --classes all --per-class 50 --cfg 5 --top-k 600 --top-p 0.98 --out samples/aim-xl-50k
"""


@app.command("sample", help=_HELP, no_args_is_help=True)
def sample_cmd(
    checkpoint: Path = typer.Argument(..., help="training run directory, checkpoints/step-XXXXXX folder, or converted checkpoint"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class ids: 1,5,9 | 0-9 | all | random:N (default all)"),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="a text prompt (repeatable; text-conditioned runs)"),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="a file of prompts, one a line"),
    per_class: int = typer.Option(1, "--per-class", help="images per class (or per prompt)"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="classifier-free guidance scale (1 disables)"),
    cfg_schedule: Optional[str] = typer.Option(None, "--cfg-schedule", help="constant | linear"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="softmax temperature (0: greedy)"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="keep the k most likely tokens (0: all)"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="nucleus mass (1: all)"),
    decode_width: Optional[int] = typer.Option(
        None, "--decode-width", help="decode in groups of exactly this many images, so GPU images do not depend on --batch-size (a job pins its first --batch-size)"),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", help="a sampler option as key=value (repeatable), validated by the sampler's config"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="a registered sampler instead of the recipe's"),
    seed: int = typer.Option(0, "--seed", help="image i uses (seed, i); random:N classes are drawn with it too"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per sampler call (default: recipe eval.batch_size)"),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="images per resumable shard (default: the batch size)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast)"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step of a run (default: the latest complete one)"),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="EMA weights (default: when present and eval.use_ema)"),
    tokenizer: Optional[Path] = typer.Option(
        None, "--tokenizer", help="tokenizer weights to decode with instead of the run's own (checked) copy"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: samples/<checkpoint name>)"),
    png: bool = typer.Option(True, "--png/--no-png", help="write one PNG per image"),
    grid_classes: int = typer.Option(10, "--grid-classes", help="rows of grid.png (first classes or prompts)"),
    grid_per_class: int = typer.Option(8, "--grid-per-class", help="columns of grid.png"),
    clean_shards: bool = typer.Option(False, "--clean-shards", help="delete shards after merging (a rerun then starts over)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
) -> None:
    from avgkit.api import load
    from avgkit.runtime.device import resolve_device
    from avgkit.runtime.distributed import setup, teardown
    from avgkit.sample.job import SampleRequest, run_sample_job

    for name, value in (("--batch-size", batch_size), ("--shard-size", shard_size)):
        if value is not None and value < 1:
            raise AvgkitError(f"{name} must be at least 1 (got {value})")
    if out is not None and out.exists() and not out.is_dir():
        raise AvgkitError(f"--out {out} is a file; pass a folder for the samples")
    prompts = read_prompts(prompt or [], prompts_file)
    resolve_device(device)  # a clear error before any process group is joined
    env = setup(device)
    try:
        gen = load(checkpoint, device=env.device, ema="auto" if ema is None else ema, step=step, tokenizer=tokenizer,
                   sampler=sampler)
        labels = request_labels(gen, checkpoint, classes, prompts, per_class, seed)
        options = sampler_options(option or [], {"cfg_scale": cfg, "cfg_schedule": cfg_schedule,
                                                 "temperature": temperature, "top_k": top_k, "top_p": top_p,
                                                 "decode_width": decode_width})
        gen.sampler_config(**options)  # the sampler's config judges them, before any work
        request = SampleRequest(
            labels=labels,
            seed=seed,
            sampler=options,
            batch_size=batch_size or gen.default_batch_size,
            shard_size=shard_size,
            precision=precision,
            write_png=png,
            grid_classes=grid_classes,
            grid_per_class=grid_per_class,
            clean_shards=clean_shards,
            classes_spec=classes if prompts is None else None,
            per_class=per_class,
            prompts=prompts,
        )
        target = out or Path("samples") / checkpoint.resolve().name
        result = run_sample_job(gen, target, request, env=env, progress=not quiet, command=["avgkit", *sys.argv[1:]])
    finally:
        teardown(env)
    if env.is_main and not quiet:
        rate = f", {result.images_per_s:.2f} images/s" if result.images_per_s else ""
        typer.echo(f"{result.num_images} images in {result.out_dir} (sampled now: {result.sampled}{rate})")


def read_prompts(given: list[str], file: Path | None) -> list[str] | None:
    """The --prompt values, then the lines of the --prompts file (blank lines skipped); None when neither is given."""
    if not given and file is None:
        return None
    prompts = list(given)
    if file is not None:
        if not file.is_file():
            raise AvgkitError(f"prompts file {file} not found; write one prompt a line")
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        if not any(lines):
            raise AvgkitError(f"prompts file {file} holds no prompts; write one prompt a line")
        prompts += [line for line in lines if line]
    if not all(p.strip() for p in prompts):
        raise AvgkitError("--prompt is empty; give the text to draw, e.g. --prompt forty-two")
    return prompts


def request_labels(gen: Generator, checkpoint: Path, classes: str | None, prompts: list[str] | None, per_class: int,
                   seed: int) -> np.ndarray:
    """The label of every image: class ids, or prompt indices (prompt by prompt) for a text-conditioned run."""
    from avgkit.sample.classes import label_list

    if gen.takes_text:
        if classes is not None:
            raise AvgkitError(f"{checkpoint} is conditioned on text, not classes; pass --prompt TEXT (repeatable) or "
                              f"--prompts FILE instead of --classes")
        if prompts is None:
            raise AvgkitError(f"{checkpoint} is conditioned on text; pass --prompt TEXT (repeatable) or --prompts FILE "
                              f"(one prompt a line)")
        return label_list(range(len(prompts)), per_class)
    if prompts is not None:
        raise AvgkitError(f"{checkpoint} is class-conditional (conditioner {gen.recipe.conditioner.name!r}); "
                          f"--prompt and --prompts need a text-conditioned run; pass --classes")
    return gen.labels(classes or "all", per_class, seed=seed)


def sampler_options(pairs: list[str], shortcuts: dict[str, object]) -> dict[str, object]:
    """``-o key=value`` options (values read as YAML) merged with the shortcut flags that were given."""
    from avgkit.recipe import parse_override

    given = {k: v for k, v in shortcuts.items() if v is not None}
    options: dict[str, object] = {}
    for text in pairs:
        keys, value = parse_override(text)
        key = ".".join(keys)
        if key in given:
            raise AvgkitError(f"sampler option {key} is given twice (-o {text} and its shortcut flag); keep one")
        options[key] = value
    return {**given, **options}
