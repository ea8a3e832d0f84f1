"""Transformer behaviour beyond the conformance suite: cache layout, prefixes, errors, registry."""

from __future__ import annotations

import pytest
import torch
from avgkit_transformer import PRESETS, TransformerBackbone, TransformerConfig
from avgkit_transformer.errors import TransformerError

from avgkit.interfaces import Conditioning
from avgkit.testing.toys import ToyClassConditioner, ToyClassConfig


def _tiny(**extra) -> TransformerBackbone:
    torch.manual_seed(0)
    model = TransformerBackbone(TransformerConfig(**{**PRESETS["tiny"], **extra}, vocab_size=16, num_tokens=16))
    return model.eval()


def _decode_all(model, cond, codes):
    state = model.init_state(codes.shape[0])
    out = [model.prefill(state, cond)]
    for k in range(codes.shape[1] - 1):
        out.append(model.step(state, codes[:, k], cond))
    return torch.stack(out, 1), state


def test_cache_is_preallocated_at_full_size():
    model = _tiny(kv_heads=2, max_prefix_len=3)
    state = model.init_state(5, dtype=torch.bfloat16)
    assert len(state.keys) == len(state.values) == 2  # one base tensor per layer and key/value
    assert all(t.shape == (5, 2, 3 + 16, 16) for t in state.keys + state.values)  # (B, kv_heads, max_len, head_dim)
    assert state.dtype == torch.bfloat16 and state.pos.shape == ()


def test_cache_follows_half_precision_autocast():
    model = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.init_state(2).dtype == torch.bfloat16
    assert model.init_state(2).dtype == torch.float32


@torch.no_grad()
def test_multi_vector_prefix_decodes_like_training():
    model = _tiny(max_prefix_len=2)
    cond = Conditioning(prefix=torch.randn(3, 2, 64))
    codes = torch.randint(0, 16, (3, 16))
    decoded, state = _decode_all(model, cond, codes)
    assert torch.allclose(decoded, model(codes, cond), atol=1e-5)
    assert int(state.pos) == 2 + 15


@torch.no_grad()
def test_prefill_restarts_a_used_state():
    model = _tiny()
    cond = Conditioning(prefix=torch.randn(2, 1, 64))
    codes = torch.randint(0, 16, (2, 16))
    first, state = _decode_all(model, cond, codes)
    again = [model.prefill(state, cond)] + [model.step(state, codes[:, k], cond) for k in range(15)]
    assert torch.allclose(torch.stack(again, 1), first, atol=1e-6)


@torch.no_grad()
def test_zero_gates_reduce_blocks_to_identity():
    """Modulation gate multiplies both sub-layer outputs: gate 0 leaves only the embedding path."""
    model = _tiny()
    layers = torch.randn(2, 3, 3, 64)
    layers[:, :, 2] = 0  # gates
    final = torch.randn(3, 2, 64)
    cond = Conditioning(prefix=torch.randn(3, 1, 64), layers=layers, final=final)
    codes = torch.randint(0, 16, (3, 16))
    x = torch.cat([cond.prefix, model.tok_embed(codes[:, :-1])], 1)
    h = model.norm_f(x) * (1 + final[:, None, 1]) + final[:, None, 0]
    assert torch.allclose(model(codes, cond), model.head(h), atol=1e-5)


def test_too_long_prefix_is_a_clear_error():
    model = _tiny()
    state = model.init_state(2)
    with pytest.raises(TransformerError, match="max_prefix_len: 2"):
        model.prefill(state, Conditioning(prefix=torch.randn(2, 2, 64)))


def test_batch_and_width_mismatch_are_clear_errors():
    model = _tiny()
    with pytest.raises(TransformerError, match="batch 3 != decoding state batch 2"):
        model.prefill(model.init_state(2), Conditioning(prefix=torch.randn(3, 1, 64)))
    with pytest.raises(TransformerError, match="width 32 != transformer dim 64"):
        model(torch.zeros(2, 16, dtype=torch.long), Conditioning(prefix=torch.randn(2, 1, 32)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dim": 64, "heads": 3}, "not divisible by heads"),
        ({"dim": 24, "heads": 4}, "multiple of 4"),
        ({"heads": 4, "kv_heads": 3}, "not a multiple of kv_heads"),
        ({"num_tokens": 12}, "not a square; set grid_width"),
        ({"num_tokens": 12, "grid_width": 5}, "not a multiple of grid_width"),
    ],
)
def test_config_errors(options, message):
    values = {**PRESETS["tiny"], "vocab_size": 16, "num_tokens": 16, **options}
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**values)


def test_unvalidated_fill_is_rechecked_by_the_model():
    cfg = TransformerConfig(**PRESETS["tiny"]).model_copy(update={"vocab_size": 16, "num_tokens": 15})
    with pytest.raises(TransformerError, match="not a square"):
        TransformerBackbone(cfg)


def test_needs_vocab_and_tokens():
    with pytest.raises(TransformerError, match="needs vocab_size and num_tokens"):
        TransformerBackbone(TransformerConfig(**PRESETS["tiny"]))


def test_builds_from_a_recipe_through_the_registry():
    import avgkit_transformer.plugin as plugin

    from avgkit.build import build, parameter_counts
    from avgkit.plugins import PluginManager
    from avgkit.recipe import validate_recipe

    registry = PluginManager(entry_points=False, extra=[("transformer-under-test", plugin)]).registry
    recipe = validate_recipe({
        "name": "t", "tokenizer": "toy-patch:tiny", "backbone": "transformer:tiny",
        "conditioner": {"name": "toy-class", "modulate": True},
    })
    comps = build(recipe, registry=registry)
    assert (comps.backbone.vocab_size, comps.backbone.num_tokens) == (16, 16)
    counts = parameter_counts(comps)
    assert counts["non_embedding"] == counts["total"] - 16 * 64 - 11 * 64
    codes = comps.sampler.sample(comps.backbone.eval(), comps.conditioner.eval(), torch.tensor([1, 2]))
    assert codes.shape == (2, 16)


def test_a_non_square_tokenizer_gives_its_grid_width_and_samples_a_4x8_grid():
    """A recipe's tokenizer of 4x8 tokens: the 2D RoPE uses 8 columns, sampling fills 32 codes."""
    import avgkit_transformer.plugin as plugin

    from avgkit.build import build
    from avgkit.errors import AvgkitError
    from avgkit.plugins import PluginManager
    from avgkit.recipe import validate_recipe
    from avgkit.sample.grids import generate_images

    registry = PluginManager(entry_points=False, extra=[("transformer-under-test", plugin)]).registry
    raw = {"name": "t", "tokenizer": {"name": "toy-patch", "image_size": [8, 16], "patch": 2},
           "backbone": "transformer:tiny", "conditioner": {"name": "toy-class", "modulate": True}}
    torch.manual_seed(0)
    comps = build(validate_recipe(raw), registry=registry)
    assert comps.tokenizer.grid == (4, 8) and comps.backbone.num_tokens == 32
    assert comps.backbone.config.grid_width == 8 and comps.backbone.config.width == 8
    # image token k sits on row k // 8, column k % 8: token 9 (row 1, column 1) turns like row 1 and column 1
    table = comps.backbone._table(torch.tensor([1 + 9]), 1)
    freqs = 10000.0 ** (-torch.arange(0, 8, 2).float() / 8)
    assert torch.allclose(table[0, :, 0], torch.cos(torch.cat([1 * freqs, 1 * freqs])))
    backbone, conditioner = comps.backbone.eval(), comps.conditioner.eval()
    codes = comps.sampler.sample(backbone, conditioner, torch.tensor([1, 2, 3]))
    assert codes.shape == (3, 32) and int(codes.min()) >= 0 and int(codes.max()) < 16
    images = generate_images(backbone, conditioner, comps.sampler, comps.tokenizer, torch.tensor([1, 2]), seed=0,
                             batch_size=2, device=torch.device("cpu"))
    assert images.shape == (2, 1, 8, 16)
    # a grid_width the tokenizer contradicts is refused before anything runs
    with pytest.raises(AvgkitError, match="grid_width=4 but the tokenizer gives 8"):
        build(validate_recipe({**raw, "backbone": {"name": "transformer", "preset": "tiny", "grid_width": 4}}),
              registry=registry)


def test_pairs_with_modulating_conditioner_in_training_mode():
    model = _tiny(token_dropout=0.1, resid_dropout=0.1, ffn_dropout=0.1, drop_path=0.2).train()
    cond = ToyClassConditioner(ToyClassConfig(), dim=64, num_layers=2)
    logits = model(torch.randint(0, 16, (4, 16)), cond(torch.tensor([0, 1, 2, 3])))
    assert logits.shape == (4, 16, 16) and torch.isfinite(logits).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_step_is_cuda_graph_capturable():
    model = _tiny().cuda()
    cond = Conditioning(prefix=torch.randn(4, 1, 64, device="cuda"))
    codes = torch.randint(0, 16, (4, 16), device="cuda")
    expected = model(codes, cond)
    state = model.init_state(4, device="cuda")
    model.prefill(state, cond)
    token = codes[:, 0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as graph capture requires
        model.step(state, token, cond)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    model.prefill(state, cond)
    with torch.cuda.graph(graph):
        out = model.step(state, token, cond)
    model.prefill(state, cond)  # the capture ran the step once: start again
    for k in range(15):
        token.copy_(codes[:, k])
        graph.replay()
        assert torch.allclose(out, expected[:, k + 1], atol=1e-4), k


def test_compiled_decoding_step_matches_eager_and_keeps_its_cache_static():
    """The step traces whole (KV cache and position updated in place) and draws the eager step's tokens;
    the cache is marked static so inductor's own CUDA graphs may update it in place too."""
    from torch._dynamo.utils import counters

    from avgkit.build import build
    from avgkit.recipe import validate_recipe
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    torch.manual_seed(0)
    c = build(validate_recipe({"name": "t", "tokenizer": "toy-patch", "backbone": "transformer:tiny",
                               "conditioner": {"name": "class-token", "num_classes": 10}}))
    backbone, cond = c.backbone.eval(), c.conditioner.eval()
    state = backbone.init_state(2)
    assert all(hasattr(t, "_dynamo_static_input_type") for t in (*state.keys, *state.values, state.pos))
    labels = torch.tensor([1, 7])
    want = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8)).sample(backbone, cond, labels, seed=2)
    compiled = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, compile=True))
    compiled.compile_backend = "aot_eager"
    counters.clear()
    assert torch.equal(compiled.sample(backbone, cond, labels, seed=2), want)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["eager", "graph", "compiled"])
def test_gpt_b_samples_are_reproducible_on_the_gpu(path):
    """GPT-B at full size (random weights and head, bf16) with CFG 2, top-k 600, top-p 0.98: the same image on
    a repeated call and in calls of another size, per code path."""
    from avgkit.plugins import get_registry
    from avgkit.testing.reproducibility import assert_reproducible

    reg = get_registry()
    spec, cspec = reg.get("backbone", "transformer"), reg.get("conditioner", "class-token")
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve("gpt-b", {"vocab_size": 16384, "num_tokens": 256}))
    torch.nn.init.normal_(backbone.head.weight, std=0.02)
    cond = cspec.factory(cspec.resolve(None, {"num_classes": 1000}), dim=backbone.dim, num_layers=backbone.num_layers)
    backbone, cond = backbone.cuda().bfloat16().eval(), cond.cuda().bfloat16().eval()
    assert_reproducible(backbone, cond, path=path)


def test_compiled_step_writes_the_cache_without_rewriting_it():
    """Functionalization turns an in-place write into a view of a larger tensor into a scatter of the whole
    base (a copy of every layer's cache, every step); the step must write each cache base directly."""
    import collections

    from torch._dynamo.backends.common import aot_autograd

    from avgkit.build import build
    from avgkit.recipe import validate_recipe
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    ops: collections.Counter = collections.Counter()

    def count(gm, _inputs):
        ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch.manual_seed(0)
    c = build(validate_recipe({"name": "t", "tokenizer": "toy-patch", "backbone": "transformer:tiny",
                               "conditioner": {"name": "class-token", "num_classes": 10}}))
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, compile=True))
    sampler.compile_backend = aot_autograd(fw_compiler=count)
    sampler.sample(c.backbone.eval(), c.conditioner.eval(), torch.arange(3), seed=0)
    assert ops["aten.index_copy.default"] >= 2 * c.backbone.num_layers
    scatters = {op: n for op, n in ops.items() if "scatter" in op}
    assert not scatters, f"the compiled step rewrites whole tensors: {scatters}"
