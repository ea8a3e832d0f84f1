"""Official AiM code -> fixture files -> `avgkit convert` -> the same logits.

The fixtures (``plugins/mamba/tests/fixtures/aim_tiny_<name>.*``) are written by
``plugins/mamba/scripts/make_aim_fixture.py`` from the reference implementation: the
weights exactly as its hub mixin saves them (tied head dropped) and its teacher-forced
and step-by-step logits on fixed tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avgkit.api as api
from avgkit.convert import convert_checkpoint
from avgkit.recipe import validate_recipe

FIXTURES = Path(__file__).resolve().parents[2] / "plugins" / "mamba" / "tests" / "fixtures"
NAMES = ["adaln", "group2"]


def _recipe(meta: dict, positions: str):
    c = meta["config"]
    grid = int(round(c["num_tokens"] ** 0.5))
    conditioner = ({"name": "adaln-group", "groups": c["num_groups"]} if c["adaln_group"] else {"name": "adaln"})
    return validate_recipe({
        "name": "aim-reference-fixture",
        "tokenizer": {"name": "toy-patch", "image_size": 2 * grid, "patch": 2, "levels": c["vocab_size"]},
        "backbone": {"name": "mamba2", "d_model": c["d_model"], "n_layer": c["n_layer"], "positions": positions},
        "conditioner": {**conditioner, "num_classes": c["num_classes"]},
    })


@pytest.mark.parametrize("name", NAMES)
def test_reference_checkpoint_converts_to_the_same_logits(tmp_path, name):
    stem = FIXTURES / f"aim_tiny_{name}"
    if not Path(f"{stem}.weights.safetensors").is_file():
        pytest.skip(f"reference fixture {stem}.* not generated (plugins/mamba/scripts/make_aim_fixture.py)")
    meta = json.loads(Path(f"{stem}.json").read_text())
    io = load_file(f"{stem}.io.safetensors")
    tokens, labels = io["tokens"].long(), io["labels"].long()

    out = convert_checkpoint(f"{stem}.weights.safetensors", "aim", _recipe(meta, "reference"), tmp_path / "ckpt")
    gen = api.load(out, device="cpu")
    with torch.no_grad():
        teacher = gen.backbone(tokens, gen.conditioner(labels))
    torch.testing.assert_close(teacher, io["teacher_forced_logits"], atol=1e-5, rtol=0)

    # the decoding path with the reference's generation positions (image token k at row k + 1)
    with torch.inference_mode():
        cond = gen.conditioner(labels)
        state = gen.backbone.init_state(len(labels))
        steps = [gen.backbone.prefill(state, cond)]
        for k in range(tokens.shape[1] - 1):
            steps.append(gen.backbone.step(state, tokens[:, k], cond))
    torch.testing.assert_close(torch.stack(steps, 1), io["step_logits"], atol=1e-5, rtol=0)
