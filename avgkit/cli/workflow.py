"""``avgkit prepare``, ``avgkit eval``, ``avgkit sweep`` and ``avgkit compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from avgkit.cli.base import app
from avgkit.errors import AvgkitError
from avgkit.runs.layout import RunDir


@app.command("prepare")
def prepare_cmd(
    recipe: str = typer.Argument(..., help="recipe name or path"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
    device: str = typer.Option("auto", help="where the tokenizer (and a frozen text encoder) runs: auto | cpu | cuda"),
    replace_features: bool = typer.Option(
        False, "--replace-features", help="replace text features of another encoder already in the store"),
) -> None:
    """Encode the recipe's images once into its zarr code store (trains the tokenizer first if the
    recipe says how). A text recipe with a frozen encoder (t5, clip) gets the encoder's features
    of each distinct caption stored beside the codes. Resumable: after an interruption, run the
    same command again.

    Examples:

      avgkit prepare digits

      avgkit prepare aim-b --device cuda data.prepare_batch_size=512

      avgkit prepare captions-t5.yaml --device cuda --replace-features
    """
    from avgkit.build import build
    from avgkit.data.features import describe_encoder, recorded_encoder
    from avgkit.plugins import get_registry
    from avgkit.recipe import load_recipe
    from avgkit.runtime.distributed import setup, teardown
    from avgkit.train.pipeline import caption_conditions, ensure_tokenizer_weights, load_train_data

    r = load_recipe(recipe, overrides or [])
    if r.data is None or r.data.store is None:
        raise AvgkitError("the recipe has no data.store to prepare; set data.store (e.g. data.store=codes/digits.zarr)")
    env = setup(device)
    try:
        weights = ensure_tokenizer_weights(r, get_registry(), env)
        comps = build(r, device=env.device)
        comps.tokenizer.requires_grad_(False).eval()
        data = load_train_data(r, comps, env, weights)
        table = caption_conditions(r, comps, env, data, replace_features=replace_features)
    finally:
        teardown(env)
    typer.echo(f"ready: {r.data.store} ({data.description})")
    encoder = recorded_encoder(r.data.store) if table is not None else None
    if encoder is not None:
        typer.echo(f"text features: {len(table)} captions, {describe_encoder(encoder)}")


@app.command("eval")
def eval_cmd(
    samples: Path = typer.Argument(..., help="folder of PNGs or an ADM-format .npz (arr_0 images, arr_1 labels)"),
    reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                            help="reference images (folder/.npz), a stats file, or digits:train"),
    out: Path = typer.Option(Path("eval"), "--out", help="where the JSON report, Markdown summary and grid go"),
    extractor: str = typer.Option("inception-v3-compat", help="inception-v3-compat | digits"),
    weights: Optional[Path] = typer.Option(None, help="Inception weights file (never downloaded)"),
    metrics: str = typer.Option("fid,is,precision,recall", help="comma-separated"),
    batch_size: int = typer.Option(64, help="images per feature-extractor batch"),
    device: Optional[str] = typer.Option(None, help="where features are computed: cpu | cuda | cuda:N (default: a GPU when present)"),
    seed: Optional[int] = typer.Option(None, help="sampling seed, recorded in the report"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint the samples came from, hashed into the report"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a report already in --out"),
) -> None:
    """FID / IS / precision / recall of samples against reference statistics (cached by hash).

    Examples:

      avgkit eval samples/digits -r digits:train --extractor digits

      avgkit eval samples/samples.npz -r VIRTUAL_imagenet256_labeled.npz --weights weights-inception-2015-12-05-6726825d.pth
    """
    if not samples.exists():
        raise AvgkitError(f"samples not found: {samples}")
    if weights is not None and extractor != "inception-v3-compat":
        raise AvgkitError(f"--weights is for the Inception extractor; the {extractor!r} extractor brings its own "
                          f"(drop --weights)")
    import json

    from avgkit.eval import run_eval

    # `avgkit sample` writes its settings beside the npz: record them with the scores
    settings_file = (samples if samples.is_dir() else samples.parent) / "sampling.json"
    sampling = json.loads(settings_file.read_text()) if settings_file.exists() else None
    if seed is None and sampling is not None:
        seed = sampling.get("seed")
    report = run_eval(
        samples, reference, out, metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
        extractor=extractor, weights_path=weights, batch_size=batch_size, device=device, seed=seed,
        checkpoint=checkpoint, sampling=sampling, overwrite=overwrite,
    )
    for key, value in report.get("metrics", {}).items():
        typer.echo(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")
    typer.echo(f"report: {out}")


@app.command("sweep")
def sweep_cmd(
    recipe: str = typer.Argument(..., help="base recipe name or path"),
    axes: list[str] = typer.Option(..., "--grid", "-g", help="key=v1,v2,... (repeatable; cartesian product)"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="key=value applied to every point"),
    out: Optional[str] = typer.Option(None, help="root of the run directories (default runs/<recipe>-sweep)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the points and their parameter counts only"),
    resume: bool = typer.Option(False, "--resume", help="continue unfinished points"),
) -> None:
    """Train one run per point of a grid of recipe overrides, then compare them.

    Examples:

      avgkit sweep digits -g conditioner=adaln,adaln-single,adaln-group,class-token -s train.steps=200

      avgkit sweep digits -g train.lr=1e-3,2e-3 -g train.batch_size=32,64 --dry-run
    """
    from avgkit.ablation import compare_runs, parse_grid, sweep_recipes
    from avgkit.build import build, parameter_counts
    from avgkit.recipe import recipe_changes

    recipes = sweep_recipes(recipe, parse_grid(axes), overrides or [], out)
    for r in recipes:
        n = parameter_counts(build(r, device="meta"))
        typer.echo(f"{r.name:<48} {n['total']:>14,} params ({n['non_embedding']:,} non-embedding) -> {r.run_dir}")
    if dry_run:
        return
    from avgkit.build import resolved_recipe_dict, resolved_recipe_yaml
    from avgkit.runs.checkpoint import latest_checkpoint
    from avgkit.train.pipeline import run_recipe

    for r in recipes:
        typer.echo(f"== {r.name}")
        stored = RunDir(r.run_dir).recipe
        text = stored.read_text() if stored.is_file() else None
        if RunDir(r.run_dir).eval.exists():
            if text == resolved_recipe_yaml(r):  # finished with these settings: its results stand
                typer.echo("   already finished; skipped")
                continue
            if not resume:
                raise AvgkitError(
                    f"{r.run_dir} finished with another recipe ({recipe_changes(text or '', resolved_recipe_dict(r))});"
                    f" pass --out for a new sweep folder, or --resume to continue these runs with the new settings"
                )
        run_recipe(r, resume=latest_checkpoint(r.run_dir / "checkpoints") is not None)
    root = recipes[0].run_dir.parent
    result = compare_runs([r.run_dir for r in recipes], root)
    _print_table(result)


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories"),
    out: Path = typer.Option(Path("compare"), "--out", help="where compare.md/.json and losses.png go"),
) -> None:
    """Table of runs (parameters, final loss, tokens/s, metrics) and their loss curves.

    Examples:

      avgkit compare runs/digits-sweep/*/ --out runs/digits-sweep

      avgkit compare runs/digits runs/digits-single
    """
    from avgkit.ablation import compare_runs

    # a shell glob over a sweep folder also matches the compare.* files written there
    files = [r for r in runs if r.is_file()]
    if files and len(files) < len(runs):
        typer.echo(f"skipping {len(files)} file(s) that are not run directories: "
                   f"{', '.join(str(f) for f in files[:3])}", err=True)
        runs = [r for r in runs if not r.is_file()]
    _print_table(compare_runs(runs, out))


def _print_table(result: dict) -> None:
    cols, rows = result["columns"], result["rows"]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    typer.echo(f"loss curves: {result['plot']}\nsummary: {result['markdown']}")
