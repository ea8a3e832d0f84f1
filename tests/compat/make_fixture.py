"""Writes the compatibility fixture: a run folder and a tokenizer work folder, plus what they gave.

    python tests/compat/make_fixture.py tests/compat/fixture

The committed fixture was written by avgkit 0.1.0 before its run directory and
checkpoint code moved into ``avgkit.runs`` (commit c8ec536): a toy AR run on the built-in
digits (checkpoints at steps 4 and 8) and a tiny LlamaGen tokenizer trained for 4 steps
(checkpoints at 2 and 4). ``expected.json`` holds what that code produced from them:
sampled tokens, and hashes of the step-8 / step-4 weights that a resume from the earlier
checkpoint must reproduce. ``test_compat.py`` holds later code to the same results.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TRAIN = {"steps": 8, "batch_size": 8, "lr": 3e-3, "log_every": 2, "ckpt_every": 4, "sample_every": None,
         "ema": 0.9, "device": "cpu", "keep_last": 2}
RECIPE = {
    "name": "compat-toy",
    "tokenizer": "toy-patch",
    "backbone": {"name": "toy-gru", "dim": 16, "layers": 1},
    "conditioner": {"name": "toy-class", "num_classes": 10},
    "sampler": {"name": "ar", "cfg_scale": 2.0, "top_k": 5},
    "data": {"source": "digits", "store": None},
    "train": TRAIN,
    "eval": {"samples_per_class": 1},
}
VQ = dict(image_size=16, channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, codebook_size=32,
          codebook_dim=4, norm_groups=4)
VQ_TRAIN = dict(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, ema_decay=0.9, disc_start=2, disc_width=8,
                disc_layers=2, log_every=1, ckpt_every=2, keep_checkpoints=2, device="cpu", threads=1)


def tensor_digest(path: Path) -> str:
    """SHA-256 over the tensors of a safetensors file (names, dtypes, shapes, bytes), not its header."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def vq_images(n: int = 24, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    low = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)


def sample_tokens(run: Path) -> list[list[int]]:
    import avgkit.api

    gen = avgkit.api.load(str(run), device="cpu")
    codes = gen.sample_codes([1, 7, 3], n_per_class=2, cfg_scale=2.0, seed=3)
    return codes.tolist()


def main(out: Path) -> None:
    from avgkit_llamagen.config import VQConfig
    from avgkit_llamagen.loading import load_tokenizer
    from avgkit_llamagen.train import VQTrainConfig, train_vq

    from avgkit.recipe import validate_recipe
    from avgkit.train.pipeline import run_recipe

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run = out / "run"
    run_recipe(validate_recipe({**RECIPE, "output_dir": str(run)}), progress=False)
    tok = out / "tokenizer-work"
    weights = train_vq(VQConfig(**VQ), VQTrainConfig(**VQ_TRAIN), vq_images(), tok, progress=False)
    tokenizer = load_tokenizer(weights)
    with torch.no_grad():
        codes = tokenizer.encode(vq_images()[:4])
    expected = {
        "run_samples": sample_tokens(run),
        "run_step8_model": tensor_digest(run / "checkpoints" / "step-000008" / "model.safetensors"),
        "run_step8_ema": tensor_digest(run / "checkpoints" / "step-000008" / "ema.safetensors"),
        "tokenizer_weights": Path(weights).name,
        "tokenizer_codes": codes.tolist(),
        "tokenizer_step4": sorted(p.name for p in (tok / "checkpoints").iterdir()),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps({k: v for k, v in expected.items() if "samples" not in k and "codes" not in k}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "fixture")
