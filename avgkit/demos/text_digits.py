"""Text-to-image on real handwriting: two-digit numbers from their words, on the CPU in minutes.

    python -m avgkit.demos.text_digits --out runs/text-digits-demo   (the recipe: avgkit train text-digits)

1. the ``llamagen-vq`` ``digits`` tokenizer, trained on the scikit-learn training digits
   (reused when ``<out>/tokenizer.safetensors`` exists);
2. codes of every training digit, joined side by side into 4x8 grids for random
   (tens, units) pairs of the training numbers (:mod:`avgkit.data.numbers`);
3. a ``mamba2`` backbone with the ``text`` conditioner (word encoder) trained on the
   captions, through the generic training loop;
4. samples for every number 20..99 at CFG 1 and at the demo's CFG, read by the digit
   classifier half by half (a number counts when both halves are right): accuracy on
   the seen numbers and on the held-out ones, ``results.json`` and ``samples.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS: dict[str, Any] = {
    "backbone": {"name": "mamba2", "preset": "digits"},
    "conditioner": {"name": "text", "encoder": "words", "layers": 1, "label_dropout": 0.1},
    "per_number": 48,
    "train": {"steps": 1000, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "schedule": "cosine",
              "weight_decay": 0.05, "grad_clip": 1.0, "precision": "fp32", "log_every": 50, "ckpt_every": 100000,
              "seed": 0},
    "cfg_scale": 3.0,
    "samples_per_number": 20,
    "tokenizer_train": {"steps": 250, "batch_size": 16, "lr": 3.0e-3, "warmup_steps": 20, "lr_schedule": "cosine",
                        "ema_decay": None, "log_every": 25, "ckpt_every": 125},
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tokenizer(out: Path, registry: Any, progress: bool) -> Any:
    from avgkit.data.sources import load_digits_images

    spec = registry.get("tokenizer", "llamagen-vq")
    weights = out / "tokenizer.safetensors"
    if not weights.is_file():
        images, _ = load_digits_images(32, "train")
        test, _ = load_digits_images(32, "test")
        trainer = registry.get("tokenizer_trainer", "llamagen-vq")
        cfg = spec.resolve("digits", {})
        made = trainer.factory(cfg, trainer.resolve(None, SETTINGS["tokenizer_train"]), images, out / "tokenizer",
                               eval_images=test, resume=True, progress=progress)
        Path(made).replace(weights) if Path(made) != weights else None
    tok = spec.factory(spec.resolve("digits", {"weights": str(weights)}))
    return tok.requires_grad_(False).eval()


def run(out: Path, *, steps: int | None = None, samples_per_number: int | None = None, progress: bool = True,
        settings: dict[str, Any] | None = None) -> dict[str, Any]:
    from avgkit.build import ARModel
    from avgkit.data.captions import CaptionTable
    from avgkit.data.numbers import (
        HELD_OUT,
        NUMBERS,
        TRAIN_NUMBERS,
        SideBySide,
        check_held_out_words,
        halves_correct,
        make_pairs,
        number_words,
        side_by_side,
    )
    from avgkit.data.sources import load_digits_images
    from avgkit.images import save_labelled_grid, to_uint8_hwc
    from avgkit.plugins import get_registry
    from avgkit.recipe import TrainSection
    from avgkit.sample.ar import ARSampler, ARSamplerConfig
    from avgkit.sample.grids import generate_images
    from avgkit.train.data import StepBatches, TensorCodes
    from avgkit.train.loop import Trainer

    s = {**SETTINGS, **(settings or {})}
    t0 = time.monotonic()
    check_held_out_words()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    registry = get_registry()
    inner = tokenizer(out, registry, progress)
    tok = SideBySide(inner)
    t_tok = time.monotonic() - t0

    digits, labels = load_digits_images(32, "train")
    with torch.inference_mode():
        digit_codes = torch.cat([inner.encode(digits[i : i + 256]) for i in range(0, len(digits), 256)])
    left, right, numbers = make_pairs(labels, TRAIN_NUMBERS, s["per_number"], seed=0)
    codes = side_by_side(digit_codes[left], digit_codes[right], inner.grid)
    captions = [number_words(n) for n in TRAIN_NUMBERS]
    caption_id = torch.as_tensor([TRAIN_NUMBERS.index(int(n)) for n in numbers])

    bspec = registry.get("backbone", s["backbone"]["name"])
    bcfg = bspec.resolve(s["backbone"].get("preset"), {k: v for k, v in s["backbone"].items()
                                                      if k not in ("name", "preset")})
    bcfg = bcfg.model_copy(update={"vocab_size": tok.codebook_size, "num_tokens": tok.num_tokens})
    backbone = bspec.factory(bcfg)
    cspec = registry.get("conditioner", s["conditioner"]["name"])
    conditioner = cspec.factory(cspec.resolve(None, {k: v for k, v in s["conditioner"].items() if k != "name"}),
                                dim=backbone.dim, num_layers=backbone.num_layers)
    model = ARModel(backbone, conditioner)
    train_cfg = TrainSection(**{**s["train"], **({"steps": steps} if steps else {})})
    batches = StepBatches(TensorCodes(codes, caption_id, num_classes=len(captions)), batch_size=train_cfg.batch_size,
                          grad_accum=1, rank=0, world_size=1, seed=train_cfg.seed)
    trainer = Trainer(model, batches, train_cfg, run_dir=out / "run", progress=progress, title="text-digits",
                      conditions=CaptionTable(captions, conditioner))
    _say(f"text-digits: {len(codes)} images of {len(TRAIN_NUMBERS)} numbers ({len(HELD_OUT)} held out), "
         f"{sum(p.numel() for p in model.parameters()):,} parameters")
    result = trainer.fit()
    t_train = time.monotonic() - t0 - t_tok

    from avgkit.eval.digits import DigitClassifier

    clf = DigitClassifier()
    per = samples_per_number or s["samples_per_number"]
    all_numbers = torch.as_tensor(NUMBERS).repeat_interleave(per)
    prompts = conditioner.tokenize([number_words(int(n)) for n in all_numbers])
    held = torch.isin(all_numbers, torch.as_tensor(HELD_OUT))
    record: dict[str, Any] = {"settings": s, "train_steps": result.step, "final_loss": result.final_loss,
                              "held_out": list(HELD_OUT), "samples_per_number": per, "by_cfg": {}}
    for cfg_scale in (1.0, s["cfg_scale"]):
        sampler = ARSampler(ARSamplerConfig(cfg_scale=cfg_scale))
        images = generate_images(model.backbone, model.conditioner, sampler, tok, prompts, seed=0, batch_size=400,
                                 device=torch.device("cpu"))
        ok = halves_correct(clf, images, all_numbers)
        record["by_cfg"][str(cfg_scale)] = {
            "seen_accuracy": float(ok[~held].float().mean()), "held_out_accuracy": float(ok[held].float().mean()),
            "per_held_out": {number_words(n): float(ok[all_numbers == n].float().mean()) for n in HELD_OUT},
        }
        if cfg_scale == s["cfg_scale"]:
            shown_numbers = [*HELD_OUT, 20, 42, 59, 99]
            keep = torch.cat([torch.nonzero(all_numbers == n).flatten()[:8] for n in shown_numbers])
            names = {n: number_words(n) + (" (held out)" if n in HELD_OUT else "") for n in shown_numbers}
            save_labelled_grid(to_uint8_hwc(images[keep]), [int(n) for n in all_numbers[keep]], out / "samples.png",
                               title=f"text-digits, CFG {cfg_scale}", class_names=[names.get(i, "") for i in range(100)])
    record["seconds"] = {"tokenizer": t_tok, "train": t_train, "total": time.monotonic() - t0}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/text-digits-demo", help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--samples-per-number", type=int, default=None, help="samples drawn per number for the score")
    args = parser.parse_args(argv)
    record = run(Path(args.out), steps=args.steps, samples_per_number=args.samples_per_number)
    for cfg, r in record["by_cfg"].items():
        print(f"CFG {cfg}: seen {r['seen_accuracy']:.3f}, held-out {r['held_out_accuracy']:.3f}")
    print(f"total {record['seconds']['total']:.0f} s; wrote {args.out}/results.json and {args.out}/samples.png")


if __name__ == "__main__":
    main()
