"""`avgkit convert` then `avgkit sample`: an official-layout file to images."""

from __future__ import annotations

import numpy as np
import torch
from convert_helpers import official_state, tiny_model
from safetensors.torch import save_file


def test_convert_then_sample(tmp_path, cli):
    recipe, comps = tiny_model("adaln-group")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(recipe.to_yaml())
    src = tmp_path / "aim.safetensors"
    save_file({k: v.contiguous() for k, v in official_state(comps, "adaln-group", head=False).items()}, str(src))
    out = tmp_path / "ckpt"
    code, stdout, err = cli("convert", str(src), "--format", "aim", "--recipe", str(recipe_file), "--out", str(out),
                            "sampler.cfg_scale=1.5", "backbone.positions=consistent")
    assert code == 0, err
    assert "model.safetensors" in stdout and "avgkit sample" in stdout
    assert "cfg_scale: 1.5" in (out / "recipe.yaml").read_text()  # overrides are stored with the checkpoint

    code, _, err = cli("sample", str(out), "--classes", "2,9", "--per-class", "2", "--device", "cpu", "--quiet",
                       "--out", str(tmp_path / "s"))
    assert code == 0, err
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["arr_0"].shape == (4, 8, 8, 3) and data["arr_1"].tolist() == [2, 2, 9, 9]
    want = comps.tokenizer.decode(recipe_sample(recipe, comps, torch.tensor([2, 2, 9, 9])))
    got = torch.from_numpy(data["arr_0"][..., 0]).float() / 127.5 - 1
    assert torch.allclose(got, want[:, 0], atol=1 / 127.5)

    code, _, err = cli("convert", str(src), "--format", "aim", "--recipe", str(recipe_file), "--out", str(out))
    assert code == 2 and "already exists" in err
    # refused before the source is read: a source that is not even there does not matter yet
    code, _, err = cli("convert", str(tmp_path / "absent.pt"), "--format", "aim", "--recipe", str(recipe_file),
                       "--out", str(out))
    assert code == 2 and "already exists" in err
    code, _, err = cli("convert", str(src), "--format", "aimm", "--recipe", str(recipe_file), "--out", str(tmp_path / "x"))
    assert code == 2 and "did you mean 'aim'" in err and err.count("\n") == 1


def recipe_sample(recipe, comps, labels):
    """Codes from the original (unconverted) components with the converted recipe's sampler settings."""
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    comps.backbone.eval(), comps.conditioner.eval()
    cfg = ARSamplerConfig(**{**recipe.sampler.options, "cfg_scale": 1.5})
    return ARSampler(cfg).sample(comps.backbone, comps.conditioner, labels, seed=0, index=torch.arange(len(labels)))


def test_aim_defaults_to_the_reference_positions_and_official_files_are_checked(tmp_path, cli):
    import json
    import os
    import subprocess
    import sys

    recipe, comps = tiny_model("adaln-group")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(recipe.to_yaml())
    src = tmp_path / "aim.safetensors"
    save_file({k: v.contiguous() for k, v in official_state(comps, "adaln-group", head=False).items()}, str(src))
    # a convert killed mid-write left its temporary folder: the next convert removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".old.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    out = tmp_path / "ckpt"
    code, _, err = cli("convert", str(src), "--format", "aim", "--recipe", str(recipe_file), "--out", str(out))
    assert code == 0, err
    assert "positions: reference" in (out / "recipe.yaml").read_text() and not stale.exists()
    info = json.loads((out / "convert.json").read_text())
    assert info["format_defaults"]["backbone.positions"]["value"] == "reference"
    # a file named like an official one but with other bytes is refused, naming both hashes
    official = tmp_path / "aim_b.bin"
    os.link(src, official)
    code, _, err = cli("convert", str(official), "--format", "aim", "--recipe", str(recipe_file), "--out",
                       str(tmp_path / "x"))
    assert code == 2 and "has SHA-256" in err and "91dc959135df3bc6" in err and "--skip-hash-check" in err
    assert err.count("\n") == 1
