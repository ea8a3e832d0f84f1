"""The Python API: loading run directories, and images that depend only on (seed, index, class)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avgkit.api as api
from avgkit.errors import AvgkitError
from avgkit.runs.checkpoint import MARKER, load_tensors


def _model_state(gen):
    return {f"backbone.{k}": v for k, v in gen.backbone.state_dict().items()}


def test_generate_is_independent_of_batch_size_and_start_index(toy_run):
    gen = api.load(toy_run, device="cpu")
    ref = gen.generate([1, 3], n_per_class=3, seed=7, batch_size=6)
    assert ref.shape == (6, 1, 8, 8) and ref.min() >= -1 and ref.max() <= 1
    assert torch.equal(ref, gen.generate([1, 3], n_per_class=3, seed=7, batch_size=1))
    assert torch.equal(ref, gen.generate([1, 3], n_per_class=3, seed=7, batch_size=4))
    # image 4 (class 3) alone, asked for at its global index
    assert torch.equal(ref[4:5], gen.generate(3, seed=7, start_index=4))
    assert not torch.equal(ref, gen.generate([1, 3], n_per_class=3, seed=8, batch_size=6))


def test_sampler_options_default_to_the_recipe(toy_run):
    gen = api.load(toy_run, device="cpu")
    assert gen.sampler_config().cfg_scale == 2.0 and gen.sampler_config(top_k=None).top_k == 8
    codes = gen.sample_codes("0-4", seed=1)
    assert codes.shape == (5, 16) and codes.dtype == torch.long
    assert torch.equal(codes, gen.sample_codes("0-4", seed=1, cfg_scale=2.0, top_k=8, top_p=0.95))
    assert not torch.equal(codes, gen.sample_codes("0-4", seed=1, cfg_scale=1.0))
    greedy = gen.sample_codes("0-4", seed=1, temperature=0)
    assert torch.equal(greedy, gen.sample_codes("0-4", seed=99, temperature=0))
    with pytest.raises(AvgkitError, match="cfg_scale"):
        gen.sample_codes(0, cfg_scale=-1.0)


def test_outputs_pil_and_uint8(toy_run):
    gen = api.load(toy_run, device="cpu")
    t = gen.generate([2, 5], seed=3)
    pil = gen.generate([2, 5], seed=3, output="pil")
    u8 = gen.generate([2, 5], seed=3, output="uint8")
    assert [p.size for p in pil] == [(8, 8), (8, 8)] and pil[0].mode == "L"
    assert u8.shape == (2, 8, 8, 3) and u8.dtype == np.uint8
    assert np.array_equal(np.asarray(pil[1]), u8[1, :, :, 0])
    assert np.array_equal(u8[0, :, :, 0], np.round((t[0, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8))


def test_load_picks_latest_complete_step_and_ema(run_copy):
    ckpts = run_copy / "checkpoints"
    step5 = load_tensors(ckpts / "step-000005" / "model.safetensors", fix="")[0]
    gen = api.load(run_copy, device="cpu", ema=False)
    assert gen.checkpoint.step == 5 and not gen.used_ema
    assert torch.equal(_model_state(gen)["backbone.head.weight"], step5["backbone.head.weight"])
    auto = api.load(run_copy, device="cpu")
    ema5 = load_tensors(ckpts / "step-000005" / "ema.safetensors", fix="")[0]
    assert auto.used_ema and torch.equal(_model_state(auto)["backbone.head.weight"], ema5["backbone.head.weight"])
    assert api.load(run_copy, device="cpu", step=3).checkpoint.step == 3
    assert api.load(ckpts / "step-000003", device="cpu").checkpoint.step == 3
    with pytest.raises(AvgkitError, match="no complete checkpoint at step 4 .*3, 5"):
        api.load(run_copy, step=4, device="cpu")
    (ckpts / "step-000005" / MARKER).unlink()  # an interrupted write is skipped
    assert api.load(run_copy, device="cpu").checkpoint.step == 3
    (ckpts / "step-000003" / "ema.safetensors").unlink()
    assert not api.load(run_copy, device="cpu").used_ema
    with pytest.raises(AvgkitError, match="no EMA weights"):
        api.load(run_copy, device="cpu", ema=True)


def test_load_rejects_weights_that_do_not_fit(run_copy):
    from safetensors.torch import save_file

    path = run_copy / "checkpoints" / "step-000005" / "model.safetensors"
    state = load_tensors(path, fix="")[0]
    state["backbone.extra.weight"] = torch.zeros(2)
    state["backbone.head.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(AvgkitError) as err:
        api.load(run_copy, device="cpu", ema=False)
    msg = str(err.value)
    assert "\n" not in msg and "backbone.extra.weight" in msg and "backbone.head.bias" in msg and "(3,)" in msg


@pytest.mark.parametrize("make, words", [
    (lambda root: root / "nowhere", "not found"),
    (lambda root: root, "has no recipe.yaml"),
])
def test_load_explains_bad_paths(tmp_path, make, words):
    with pytest.raises(AvgkitError, match=words):
        api.load(make(tmp_path), device="cpu")
