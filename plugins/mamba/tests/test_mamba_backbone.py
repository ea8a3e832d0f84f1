"""The AiM backbone: exact sizes, decoding = teacher forcing, position conventions, state precision."""

from functools import partial

import pytest
import torch

from avgkit.build import Components, parameter_counts
from avgkit.plugins import get_registry

COUNTS = {  # paper Table 1 (tied head counted once), with the recipe's conditioner
    "aim-b": ("adaln", {}, 147_622_080),
    "aim-l": ("adaln-group", {"groups": 4}, 349_760_000),
    "aim-xl": ("adaln-group", {"groups": 4}, 763_291_392),
    "aim-1b": ("adaln-group", {"groups": 4}, 1_335_944_192),
}
NON_EMBEDDING = [  # paper Table 3 ablations
    ("aim-b", "adaln-single", 93_377_472),
    ("aim-b", "adaln", 134_073_024),
    ("aim-l", "adaln-single", 322_248_192),
    ("aim-l", "adaln", 470_094_336),
]


def build(preset, cond_name, cond_opts=None, *, device=None, num_classes=1000, **bb_opts):
    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    opts = {"vocab_size": 16384, "num_tokens": 256, **bb_opts}
    with torch.device(device) if device else torch.device("cpu"):
        bb = spec.factory(spec.resolve(preset, opts))
        cs = reg.get("conditioner", cond_name)
        cond = cs.factory(cs.resolve(None, {"num_classes": num_classes, **(cond_opts or {})}), dim=bb.dim,
                          num_layers=bb.num_layers)
    return bb, cond


def counts(bb, cond):
    tok = get_registry().get("tokenizer", "toy-patch")
    return parameter_counts(Components(tok.factory(tok.resolve()), bb, cond, None, {}))


@pytest.mark.parametrize("preset", list(COUNTS))
def test_paper_parameter_counts(preset):
    name, opts, expected = COUNTS[preset]
    assert counts(*build(preset, name, opts, device="meta"))["total"] == expected


@pytest.mark.parametrize("preset,cond,expected", NON_EMBEDDING)
def test_ablation_non_embedding_counts(preset, cond, expected):
    assert counts(*build(preset, cond, device="meta"))["non_embedding"] == expected


def _tiny(**opts):
    torch.manual_seed(0)
    bb, cond = build("tiny", "adaln-group", {"groups": 2}, num_classes=10, vocab_size=32, num_tokens=24, **opts)
    with torch.no_grad():  # zero-initialised adaLN would hide the modulation path
        for p in cond.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return bb.eval(), cond.eval()


def _decode(bb, cond, codes, labels, **state_kw):
    c = cond(labels)
    state = bb.init_state(codes.shape[0], **state_kw)
    out = [bb.prefill(state, c)]
    for k in range(codes.shape[1] - 1):
        out.append(bb.step(state, codes[:, k], c))
    return torch.stack(out, 1)


def test_decoding_reproduces_teacher_forcing_fp32():
    bb, cond = _tiny()
    codes, labels = torch.randint(0, 32, (3, 24)), torch.tensor([0, 4, 9])
    with torch.no_grad():
        tf = bb(codes, cond(labels))
        step = _decode(bb, cond, codes, labels)
    torch.testing.assert_close(step, tf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("state_dtype", ["fp32", "int8"])
@pytest.mark.parametrize("positions", ["consistent", "reference"])
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_a_one_vector_prefix_by_one_step_matches_the_scan(monkeypatch, state_dtype, positions, form):
    """A class token enters the recurrent state (or the chunked form's, its window left empty) by one decode step
    from the zero state (``PREFILL_BY_STEP``): the same logits, states and position as the scan's prefill, and
    the same decode after it; a state left from an earlier call is reset first."""
    from avgkit_mamba import backbone as mamba_backbone
    from avgkit_mamba.ops.state_quant import load_state

    bb, cond = _tiny(state_dtype=state_dtype, positions=positions, decode_form=form, decode_chunk=5)
    codes, labels = torch.randint(0, 32, (3, 24)), torch.tensor([0, 4, 9])
    c = cond(labels)
    assert c.prefix_len == 1 and c.prefix_mask is None
    runs = {}
    with torch.no_grad():
        for by_step in (False, True):
            monkeypatch.setattr(mamba_backbone, "PREFILL_BY_STEP", by_step)
            state = bb.init_state(3)
            for layer in state.layers:  # an earlier call's leftovers
                layer.conv.normal_()
            if form == "chunked":
                state.length.fill_(7)
            scans: list[int] = []

            def counted(*a, f, calls=scans, **k):
                calls.append(1)
                return f(*a, **k)

            for block in bb.layers:  # by one step, no layer runs the scan's forward
                monkeypatch.setattr(block.mixer, "forward", partial(counted, f=block.mixer.forward))
            first = bb.prefill(state, c)
            assert bool(scans) != by_step
            for block in bb.layers:
                monkeypatch.delattr(block.mixer, "forward")
            runs[by_step] = (first, [load_state(s.ssm, s.scale).clone() for s in state.layers],
                             [s.conv.clone() for s in state.layers], state.position.clone(),
                             _decode(bb, cond, codes, labels))
            if form == "chunked":
                assert state.length.item() == 0  # the first window starts empty
    (f0, ssm0, conv0, pos0, dec0), (f1, ssm1, conv1, pos1, dec1) = runs[False], runs[True]
    tol = {"atol": 1e-5, "rtol": 1e-5} if state_dtype == "fp32" else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(f1, f0, atol=1e-5, rtol=1e-5)
    for a, b in zip(ssm1 + conv1, ssm0 + conv0, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert torch.equal(pos1, pos0)
    torch.testing.assert_close(dec1, dec0, **tol)


def test_reference_position_convention_shifts_rows_when_sampling_only():
    bb, cond = _tiny()
    ref, _ = _tiny(positions="reference")
    ref.load_state_dict(bb.state_dict())
    codes, labels = torch.randint(0, 32, (2, 24)), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(ref(codes, cond(labels)), bb(codes, cond(labels)))  # training identical
        a, b = _decode(bb, cond, codes, labels), _decode(ref, cond, codes, labels)
        torch.testing.assert_close(a[:, 0], b[:, 0])  # token 0 comes from the class position
        assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-3  # later tokens read other position rows
        # reference decoding == teacher forcing with the position table shifted by one row
        shifted, _ = _tiny()
        shifted.load_state_dict(bb.state_dict())
        pe = shifted.embeddings.position_embeddings.weight
        pe[:-1] = pe[1:].clone()
        torch.testing.assert_close(b, shifted(codes, cond(labels)), atol=1e-5, rtol=1e-5)


def _decoded_against_teacher(state_dtype: str):
    """(backbone, teacher-forced logits, step-by-step logits) of a tiny model with ``state_dtype``; top-1 agrees."""
    bb, cond = _tiny(state_dtype=state_dtype)
    torch.manual_seed(1)
    codes, labels = torch.randint(0, 32, (16, 24)), torch.randint(0, 10, (16,))
    with torch.no_grad():
        ref = bb(codes, cond(labels))
        low = _decode(bb, cond, codes, labels)
    agree = (ref.argmax(-1) == low.argmax(-1)).float().mean().item()
    assert agree >= 0.99, agree
    return bb, ref, low


def test_bf16_state_keeps_top1_agreement():
    bb, _, _ = _decoded_against_teacher("bf16")
    assert bb.init_state(2).layers[0].ssm.dtype == torch.bfloat16


@pytest.mark.parametrize(("model_dtype", "state_dtype"),
                         [(torch.float32, torch.float32), (torch.bfloat16, torch.int8), (torch.float16, torch.int8)])
def test_default_state_is_exact_in_fp32_and_one_byte_in_half_precision(model_dtype, state_dtype):
    """state_dtype auto: an fp32 model decodes exactly (fp32 state); a half-precision one gets the gated int8 state."""
    bb, _ = _tiny()
    assert bb.config.state_dtype == "auto"
    assert bb.to(model_dtype).init_state(2).layers[0].ssm.dtype == state_dtype


def test_decode_settings_name_the_state_init_state_allocates():
    """What a sampling job records (``decode_settings``) is the dtype ``init_state`` gives, for every precision."""
    bb, _ = _tiny()
    assert bb.decode_settings() == {"decode_form": "recurrent", "state_dtype": "float32"}
    assert bb.decode_settings(torch.bfloat16)["state_dtype"] == "int8"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bb.init_state(1).layers[0].ssm.dtype == torch.int8
    assert bb.to(torch.bfloat16).decode_settings()["state_dtype"] == "int8"
    assert _tiny(state_dtype="bf16")[0].decode_settings(torch.bfloat16)["state_dtype"] == "bfloat16"
    chunked = _tiny(decode_form="chunked", decode_chunk=8)[0]
    assert chunked.decode_settings() == {"decode_form": "chunked", "state_dtype": "float32", "decode_chunk": 8}
    assert _tiny(decode_form="dual")[0].decode_settings(torch.bfloat16) == {"decode_form": "dual"}


def test_decode_form_auto_is_chunked_for_a_one_byte_state_on_triton(monkeypatch):
    """``decode_form: auto`` takes the chunked form where its kernels run (Triton) with an int8 state, the recurrent
    one elsewhere; what the job records is what ``init_state`` allocates."""
    from avgkit_mamba.mixer import Mamba2ChunkedState
    from avgkit_mamba.ops import dispatch

    bb, _ = _tiny(decode_form="auto")
    for on_triton in (False, True):
        monkeypatch.setattr(dispatch, "resolve_impl", lambda impl, device, t=on_triton: "triton" if t else "torch")
        for autocast, form in ((None, "recurrent"), (torch.bfloat16, "chunked" if on_triton else "recurrent")):
            assert bb.decode_settings(autocast)["decode_form"] == form
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
                state = bb.init_state(1)
            assert isinstance(state.layers[0], Mamba2ChunkedState) == (form == "chunked")


def test_default_state_is_int8_under_half_precision_autocast():
    """--precision bf16 keeps fp32 weights under autocast: the state follows the autocast."""
    bb, _ = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bb.init_state(2).layers[0].ssm.dtype == torch.int8
    assert bb.init_state(2).layers[0].ssm.dtype == torch.float32


def test_state_is_constant_size_and_rows_select():
    bb, cond = _tiny()
    s = bb.init_state(4)
    sizes = [(t.conv.shape, t.ssm.shape) for t in s.layers]
    assert sizes[0] == ((4, bb.layers[0].mixer.conv_dim, 4), (4, 8, 16, 16))
    codes, labels = torch.randint(0, 32, (4, 24)), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        c = cond(labels)
        bb.prefill(s, c)
        bb.step(s, codes[:, 0], c)
        idx = torch.tensor([2, 0])
        sub = bb.select_state(s, idx)
        a = bb.step(sub, codes[idx, 1], c.select(idx))
        b = bb.step(s, codes[:, 1], c)[idx]
    torch.testing.assert_close(a, b)


def test_dual_form_decodes_like_the_recurrent_state():
    bb, cond = _tiny()
    dual, _ = _tiny(decode_form="dual")
    dual.load_state_dict(bb.state_dict())
    codes, labels = torch.randint(0, 32, (3, 24)), torch.tensor([0, 4, 9])
    with torch.no_grad():
        torch.testing.assert_close(_decode(dual, cond, codes, labels), _decode(bb, cond, codes, labels),
                                   atol=1e-5, rtol=1e-5)
        s = dual.init_state(3)
        assert s.layers[0].x.shape == (3, 1 + 24, 8, 16)  # max_prefix_len + tokens rows
        c = cond(labels)
        dual.prefill(s, c)
        dual.step(s, codes[:, 0], c)
        assert s.length.item() == 2
        idx = torch.tensor([2, 0])
        a = dual.step(dual.select_state(s, idx), codes[idx, 1], c.select(idx))
        torch.testing.assert_close(a, dual.step(s, codes[:, 1], c)[idx])


@pytest.mark.parametrize("window", [2, 5])
def test_chunked_form_decodes_like_the_recurrent_state(window):
    """24 tokens cross several windows (the state folds at each window's end, a partial one is left)."""
    bb, cond = _tiny()
    chunked, _ = _tiny(decode_form="chunked", decode_chunk=window)
    chunked.load_state_dict(bb.state_dict())
    codes, labels = torch.randint(0, 32, (3, 24)), torch.tensor([0, 4, 9])
    with torch.no_grad():
        torch.testing.assert_close(_decode(chunked, cond, codes, labels), _decode(bb, cond, codes, labels),
                                   atol=1e-5, rtol=1e-5)
        s = chunked.init_state(3)
        assert s.layers[0].x.shape == (3, window, 8, 16) and s.layers[0].ssm.shape == (3, 8, 16, 16)
        c = cond(labels)
        chunked.prefill(s, c)
        before = s.layers[0].ssm.clone()
        for k in range(window - 1):  # the state is not written inside a window
            chunked.step(s, codes[:, k], c)
        assert s.length.item() == window - 1 and torch.equal(s.layers[0].ssm, before)
        idx = torch.tensor([2, 0])
        a = chunked.step(chunked.select_state(s, idx), codes[idx, window - 1], c.select(idx))
        torch.testing.assert_close(a, chunked.step(s, codes[:, window - 1], c)[idx])
        assert not torch.equal(s.layers[0].ssm, before)  # ... and is at its last row


@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
def test_chunked_form_with_a_low_precision_state_keeps_top1_agreement(state_dtype):
    bb, cond = _tiny(state_dtype=state_dtype, decode_form="chunked", decode_chunk=4)
    torch.manual_seed(1)
    codes, labels = torch.randint(0, 32, (16, 24)), torch.randint(0, 10, (16,))
    with torch.no_grad():
        ref = bb(codes, cond(labels))
        low = _decode(bb, cond, codes, labels)
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean().item() >= 0.99
    assert (low - ref).abs().max() < 2e-2


def test_dual_form_refuses_a_longer_prefix_than_its_caches():
    from avgkit.errors import AvgkitError
    from avgkit.interfaces import Conditioning

    dual, cond = _tiny(decode_form="dual")
    c = cond(torch.tensor([1]))
    long = Conditioning(torch.cat([c.prefix, c.prefix], 1), c.layers, c.final)
    with pytest.raises(AvgkitError, match="max_prefix_len: 2"):
        dual.prefill(dual.init_state(1), long)


def test_int8_state_keeps_top1_agreement():
    bb, ref, low = _decoded_against_teacher("int8")
    assert (low - ref).abs().max() < 5e-3  # measured 5e-4 at logits of magnitude 0.7
    s = bb.init_state(2)
    assert s.layers[0].ssm.dtype == torch.int8 and s.layers[0].scale.shape == s.layers[0].ssm.shape[:3]


def test_a_non_square_tokenizer_sizes_the_position_table_and_samples_a_4x8_grid():
    """A recipe's tokenizer of 4x8 tokens: 4 * 8 learned positions (+1, the reference's offset), 32 codes sampled."""
    from avgkit.build import build as build_recipe
    from avgkit.recipe import validate_recipe
    from avgkit.sample.grids import generate_images

    recipe = validate_recipe({
        "name": "m", "tokenizer": {"name": "toy-patch", "image_size": [8, 16], "patch": 2},
        "backbone": "mamba2:tiny", "conditioner": {"name": "adaln-group", "groups": 2, "num_classes": 4},
    })
    torch.manual_seed(0)
    comps = build_recipe(recipe)
    assert comps.tokenizer.grid == (4, 8) and comps.backbone.num_tokens == 32
    assert comps.backbone.embeddings.position_embeddings.num_embeddings == 4 * 8 + 1
    backbone, conditioner = comps.backbone.eval(), comps.conditioner.eval()
    codes = comps.sampler.sample(backbone, conditioner, torch.tensor([0, 1, 3]))
    assert codes.shape == (3, 32) and int(codes.min()) >= 0 and int(codes.max()) < 16
    with torch.no_grad():
        assert backbone(codes, conditioner(torch.tensor([0, 1, 3]))).shape == (3, 32, 16)
    images = generate_images(backbone, conditioner, comps.sampler, comps.tokenizer, torch.tensor([2, 3]), seed=0,
                             batch_size=2, device=torch.device("cpu"))
    assert images.shape == (2, 1, 8, 16)
