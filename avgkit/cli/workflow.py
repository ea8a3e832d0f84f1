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
    samples: Path = typer.Argument(..., help="folder of PNGs, an ADM-format .npz (arr_0 images, arr_1 labels), or a "
                                              "training run directory (scored with its recipe's eval.classifier)"),
    reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                            help="reference images (folder/.npz), a stats file, or digits:train"),
    out: Optional[Path] = typer.Option(None, "--out", help="where the report goes (default: eval; a run: the run "
                                                           "directory, beside its recipe)"),
    extractor: Optional[str] = typer.Option(None, help="inception-v3-compat (default) | digits"),
    weights: Optional[Path] = typer.Option(None, help="Inception weights file (never downloaded)"),
    metrics: Optional[str] = typer.Option(None, help="comma-separated (default fid,is,precision,recall)"),
    batch_size: Optional[int] = typer.Option(None, help="images per feature-extractor batch (default 64); a run: "
                                                        "images per sampler call (default: eval.batch_size)"),
    device: Optional[str] = typer.Option(None, help="where features are computed, or a run sampled: cpu | cuda | cuda:N (default: a GPU when present)"),
    seed: Optional[int] = typer.Option(None, help="sampling seed, recorded in the report; a run: the seed it samples "
                                                  "with (default: eval.seed)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint the samples came from, hashed into the report"),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="a run: digits | text-digits instead of its "
                                                                        "eval.classifier"),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="a run: samples per class, or per prompt "
                                                                      "(default: eval.samples_per_class)"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="a run: the guidance scale instead of its sampler's "
                                                            "(text-digits also scores CFG 1)"),
    step: Optional[int] = typer.Option(None, "--step", help="a run: the checkpoint step (default: the latest)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a report already in --out"),
) -> None:
    """FID / IS / precision / recall of samples against reference statistics (cached by hash);
    or, given a training run, its checkpoint sampled and scored as the end of `avgkit train` does
    (eval.json and samples.png, with the recipe's eval.classifier).

    Examples:

      avgkit eval samples/digits -r digits:train --extractor digits

      avgkit eval samples/samples.npz -r VIRTUAL_imagenet256_labeled.npz --weights weights-inception-2015-12-05-6726825d.pth

      avgkit eval runs/text-digits --per-class 20 --cfg 4 --out runs/text-digits/eval-cfg4

      avgkit eval runs/digits --step 1000 --overwrite
    """
    if not samples.exists():
        raise AvgkitError(f"samples not found: {samples}")
    if samples.is_dir() and RunDir(samples).recipe.is_file():
        given = {"--reference": reference, "--extractor": extractor, "--weights": weights, "--metrics": metrics,
                 "--checkpoint": checkpoint}
        for flag, value in given.items():
            if value is not None:
                raise AvgkitError(f"{flag} is for scoring samples; {samples} is a run, scored with its recipe's "
                                  f"eval.classifier (drop {flag}, or sample it with `avgkit sample` first)")
        from avgkit.train.score import score_run

        score_run(samples, out=out, classifier=classifier, per_class=per_class, cfg=cfg, seed=seed,
                  batch_size=batch_size, step=step, device=device or "auto", overwrite=overwrite)
        return
    for flag, value in {"--classifier": classifier, "--per-class": per_class, "--cfg": cfg, "--step": step}.items():
        if value is not None:
            raise AvgkitError(f"{flag} is for scoring a training run; {samples} holds samples (drop {flag})")
    extractor = extractor or "inception-v3-compat"
    if weights is not None and extractor != "inception-v3-compat":
        raise AvgkitError(f"--weights is for the Inception extractor; the {extractor!r} extractor brings its own "
                          f"(drop --weights)")
    import json

    from avgkit.eval import run_eval
    from avgkit.eval.api import METRICS

    # `avgkit sample` writes its settings beside the npz: record them with the scores
    settings_file = (samples if samples.is_dir() else samples.parent) / "sampling.json"
    sampling = json.loads(settings_file.read_text()) if settings_file.exists() else None
    if seed is None and sampling is not None:
        seed = sampling.get("seed")
    out = out or Path("eval")
    report = run_eval(
        samples, reference, out,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics is not None else METRICS,
        extractor=extractor, weights_path=weights, batch_size=batch_size or 64, device=device, seed=seed,
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
