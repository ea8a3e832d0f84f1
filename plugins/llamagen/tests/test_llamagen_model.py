"""Architecture, presets and the Tokenizer behaviour of the LlamaGen VQ model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avgkit_llamagen.config import VQConfig
from avgkit_llamagen.errors import VQError
from avgkit_llamagen.presets import PRESETS, build_tokenizer, preset
from avgkit_llamagen.vq_model import LlamaGenVQ
from llamagen_testutil import smooth_images, tiny_config, vq16_like_config

from avgkit.interfaces import Tokenizer


def meta_model(cfg: VQConfig) -> LlamaGenVQ:
    with torch.device("meta"):
        return LlamaGenVQ(cfg)


def test_vq16_parameter_count_and_keys_match_llamagen():
    model = meta_model(preset("vq-16"))
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 71_883_403
    assert len(state) == 344
    assert state["quantize.codebook_used"].shape == (65536,)
    assert state["quantize.embedding.weight"].shape == (16384, 8)
    assert state["quant_conv.weight"].shape == (8, 256, 1, 1)
    assert state["post_quant_conv.weight"].shape == (256, 8, 1, 1)
    assert state["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert state["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    # attention after every res block of the lowest level only (plus the mid blocks)
    attn_levels = {
        k.split(".")[:3][2] for k in state if ".attn." in k and "conv_blocks" in k and k.startswith("encoder")
    }
    assert attn_levels == {"4"}
    assert "encoder.conv_blocks.4.attn.1.q.weight" in state and "encoder.conv_blocks.4.attn.2.q.weight" not in state
    assert "decoder.conv_blocks.0.attn.2.proj_out.weight" in state  # decoder lists lowest level first, 3 blocks
    assert "decoder.conv_blocks.1.attn.0.q.weight" not in state
    assert "encoder.mid.1.k.weight" in state and "decoder.mid.1.v.weight" in state
    # resamplers: 4 downsamples (levels 0-3), 4 upsamples (all decoder levels but the last)
    assert (
        sorted(k for k in state if "downsample.conv.weight" in k)[-1] == "encoder.conv_blocks.3.downsample.conv.weight"
    )
    assert "encoder.conv_blocks.4.downsample.conv.weight" not in state
    assert (
        "decoder.conv_blocks.3.upsample.conv.weight" in state
        and "decoder.conv_blocks.4.upsample.conv.weight" not in state
    )
    assert state["encoder.conv_blocks.1.downsample.conv.weight"].shape == (128, 128, 3, 3)


def test_vq16_norms_are_groupnorm_32_eps_1e6():
    model = meta_model(preset("vq-16"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)


def test_vq8_and_digits_presets():
    vq8 = meta_model(preset("vq-8"))
    assert vq8.grid == (32, 32) and vq8.num_tokens == 1024
    assert "encoder.conv_blocks.3.attn.0.q.weight" in vq8.state_dict()
    digits = preset("digits")
    assert digits.grid == (4, 4) and digits.channels == 1 and digits.image_size == 32
    assert 100 <= digits.codebook_size <= 1024
    assert set(PRESETS) >= {"vq-16", "vq-8", "digits"}


def test_small_vq16_structure_has_the_official_keys():
    official = meta_model(preset("vq-16")).state_dict()
    small = meta_model(vq16_like_config()).state_dict()
    assert list(small) == list(official)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [({"image_size": 100}, "not divisible by the downsampling factor 16"),
     ({"image_size": [256, 200]}, r"image_size \[256, 200\] is not divisible by the downsampling factor 16"),
     ({"ch": 48}, "norm_groups 32")],
)
def test_invalid_configs_are_refused(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        preset("vq-16", **overrides)


def test_unknown_preset_and_option():
    with pytest.raises(VQError, match="unknown LlamaGen VQ preset 'vq-32'"):
        preset("vq-32")
    with pytest.raises(ValueError, match="extra"):
        VQConfig(codebook=3)


@pytest.fixture(scope="module")
def tiny() -> LlamaGenVQ:
    torch.manual_seed(0)
    return LlamaGenVQ(tiny_config()).eval()


def test_is_a_tokenizer_with_shapes(tiny):
    assert isinstance(tiny, Tokenizer)
    assert tiny.grid == (4, 4) and tiny.num_tokens == 16 and tiny.codebook_size == 32 and tiny.channels == 1
    x = smooth_images(5, 16)
    codes = tiny.encode(x)
    assert codes.shape == (5, 16) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    images = tiny.decode(codes)
    assert images.shape == (5, 1, 16, 16)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert torch.equal(tiny.decode(codes.view(5, 4, 4)), images)


def test_encode_decode_deterministic_and_batch_independent(tiny):
    x = smooth_images(6, 16, seed=1)
    codes = tiny.encode(x)
    assert torch.equal(codes, tiny.encode(x))
    assert torch.equal(torch.cat([tiny.encode(x[:2]), tiny.encode(x[2:])]), codes)
    assert torch.allclose(torch.cat([tiny.decode(codes[:1]), tiny.decode(codes[1:])]), tiny.decode(codes), atol=1e-6)


def test_codes_are_the_highest_cosine_similarity(tiny):
    x = smooth_images(4, 16, seed=2)
    with torch.no_grad():
        z = tiny.quant_conv(tiny.encoder(x))  # (B, dim, h, w)
        sims = torch.einsum("bchw,nc->bhwn", F.normalize(z, dim=1), F.normalize(tiny.quantize.embedding.weight, dim=1))
    assert torch.equal(tiny.encode(x), sims.argmax(-1).flatten(1))


def test_forward_reconstruction_matches_decode_of_codes(tiny):
    x = smooth_images(3, 16, seed=3)
    with torch.no_grad():
        recon, losses = tiny(x)
    assert torch.allclose(recon.clamp(-1, 1), tiny.decode(tiny.encode(x)), atol=1e-5)
    assert set(losses) == {"codebook", "commit"}
    # commitment = beta * codebook loss in value (they differ only in where gradients flow)
    assert torch.allclose(losses["commit"], 0.25 * losses["codebook"])


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = LlamaGenVQ(tiny_config()).train()
    x = smooth_images(4, 16)
    recon, _ = model(x)
    F.mse_loss(recon, x).backward()  # reconstruction loss only: argmin has no gradient
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # codes reach the decoder only through the ST path

    model.zero_grad(set_to_none=True)
    _, losses = model(x)
    losses["codebook"].backward()  # moves codes only
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad is None

    model.zero_grad(set_to_none=True)
    _, losses = model(x)
    losses["commit"].backward()  # moves the encoder only
    assert model.quantize.embedding.weight.grad is None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_codebook_usage_is_tracked_in_training_only():
    torch.manual_seed(0)
    model = LlamaGenVQ(tiny_config())
    x = smooth_images(8, 16)
    model.eval()
    model(x)
    assert model.codebook_usage() == pytest.approx(1 / 32)  # the all-zero window: only code 0
    model.train()
    with torch.no_grad():
        model(x)
    seen = model.encode(x).unique().tolist()
    used = set(seen) | {0}
    assert model.codebook_usage() == pytest.approx(len(used) / 32)
    assert model.quantize.codebook_used[-128:].long().tolist() == model.encode(x).flatten().tolist()


def test_bad_inputs_give_clear_errors(tiny):
    with pytest.raises(VQError, match=r"expected images of shape \(B, 1, 16, 16\), got \(2, 3, 16, 16\)"):
        tiny.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(VQError, match=r"codes must lie in \[0, 32\)"):
        tiny.decode(torch.full((1, 16), 32))
    with pytest.raises(VQError, match=r"expected codes of shape \(B, 16\)"):
        tiny.decode(torch.zeros(1, 15, dtype=torch.long))


def test_build_tokenizer_without_weights_is_in_eval_mode():
    model = build_tokenizer(tiny_config())
    assert isinstance(model, LlamaGenVQ) and not model.training


def test_non_square_round_trip_is_a_4x8_grid():
    """[32, 64] images -> 4x8 codes in raster order (4 rows of 8) -> [32, 64] images."""
    torch.manual_seed(0)
    cfg = tiny_config(image_size=[32, 64], ch_mult=(1, 2, 2, 2))  # 8x downsampling
    tok = LlamaGenVQ(cfg).eval()
    assert cfg.image_size == (32, 64) and tok.image_hw == (32, 64)
    assert tok.grid == (4, 8) and tok.num_tokens == 32
    x = smooth_images(3, (32, 64))
    codes = tok.encode(x)
    assert codes.shape == (3, 32)
    _, _, idx = tok.quantize_images(x)
    assert idx.shape == (3, 4, 8) and torch.equal(codes, idx.flatten(1))  # row-major over 4 rows of 8
    images = tok.decode(codes)
    assert images.shape == (3, 1, 32, 64)
    assert torch.equal(tok.decode(codes.view(3, 4, 8)), images)
    with pytest.raises(VQError, match=r"expected codes of shape \(B, 32\) or \(B, 4, 8\)"):
        tok.decode(codes.view(3, 8, 4)[:, :4])
    with pytest.raises(VQError, match=r"\(B, 1, 32, 64\), got \(3, 1, 64, 32\); resize to image_size 32x64"):
        tok.encode(x.transpose(-1, -2))
