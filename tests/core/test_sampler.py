import pytest
import torch

from avgkit.build import build
from avgkit.recipe import validate_recipe
from avgkit.sample.ar import ARSampler, ARSamplerConfig
from avgkit.sample.filtering import sample_logits
from avgkit.sample.rng import uniform

RECIPE = {"name": "t", "tokenizer": "toy-patch", "backbone": "toy-gru:tiny", "conditioner": {"name": "toy-class"}}


def _components(seed=0):
    torch.manual_seed(seed)
    return build(validate_recipe(RECIPE))


def test_uniform_is_a_function_of_seed_index_step():
    idx = torch.arange(1000)
    u = uniform(5, idx, 3)
    assert torch.equal(u[10:20], uniform(5, idx[10:20], 3))
    assert not torch.equal(u, uniform(6, idx, 3)) and not torch.equal(u, uniform(5, idx, 4))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.03


def test_top_k_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    u = uniform(0, torch.arange(2000), 0)
    assert set(sample_logits(logits, u, top_k=2).tolist()) == {0, 1}
    assert set(sample_logits(logits, u, top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7 keeps the second token
    assert set(sample_logits(logits, u, top_p=0.1).tolist()) == {0}  # always keeps the most likely
    assert sample_logits(logits, u, temperature=0).eq(0).all()
    free = sample_logits(logits, u)
    freq = torch.bincount(free, minlength=4).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)


def test_image_depends_only_on_seed_index_class():
    c = _components()
    s = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, top_p=0.95))
    labels = torch.tensor([3, 1, 4, 1, 5])
    together = s.sample(c.backbone, c.conditioner, labels, seed=11)
    alone = torch.cat([
        s.sample(c.backbone, c.conditioner, labels[i : i + 1], seed=11, index=torch.tensor([i])) for i in range(5)
    ])
    assert torch.equal(together, alone)
    reordered = s.sample(c.backbone, c.conditioner, labels.flip(0), seed=11, index=torch.arange(5).flip(0))
    assert torch.equal(reordered.flip(0), together)
    assert not torch.equal(together, s.sample(c.backbone, c.conditioner, labels, seed=12))


def test_cfg_combines_conditioned_and_null_rows():
    c = _components()
    c.conditioner.eval()
    labels = torch.tensor([2, 7])
    greedy = ARSampler(ARSamplerConfig(cfg_scale=3.0, temperature=0))
    codes = greedy.sample(c.backbone, c.conditioner, labels)
    # recompute the first token's guided logits by hand
    st = c.backbone.init_state(2)
    cond_l = c.backbone.prefill(st, c.conditioner(labels))
    st = c.backbone.init_state(2)
    null_l = c.backbone.prefill(st, c.conditioner.null(2))
    expect = (null_l + 3.0 * (cond_l - null_l)).argmax(-1)
    assert torch.equal(codes[:, 0], expect)
    assert ARSampler(ARSamplerConfig(cfg_scale=3.0, cfg_schedule="linear")).guidance(0, 16) == 1.0


def test_decode_width_fixes_the_shape_the_model_sees():
    c = _components()
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    plain = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8)).sample(c.backbone, c.conditioner, labels, seed=3)
    seen = []
    real = c.conditioner.forward
    c.conditioner.forward = lambda lab: (seen.append(lab.shape[0]), real(lab))[1]
    fixed = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, decode_width=4))
    assert torch.equal(fixed.sample(c.backbone, c.conditioner, labels, seed=3), plain)  # padded rows dropped
    assert seen == [4, 4, 4, 4]  # two groups, each conditioned and null
    seen.clear()
    two = fixed.sample(c.backbone, c.conditioner, labels[4:], seed=3, index=torch.tensor([4, 5]))
    assert torch.equal(two, plain[4:]) and seen == [4, 4]


def test_compiled_step_draws_the_same_tokens(monkeypatch):
    """``compile`` traces the step (backbone step, CFG, filters, draw, in-place state) through Dynamo and
    AOTAutograd's functionalization; the ``aot_eager`` backend runs that traced graph without inductor's C++
    build, so the tokens must equal the eager step's bit for bit. The toy backbone's ``nn.GRU`` is one op
    Dynamo does not trace: it runs eagerly between the compiled pieces instead of failing the step."""
    from torch._dynamo.utils import counters

    c = _components()
    labels = torch.tensor([3, 1, 4])
    eager = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, top_p=0.95))
    compiled = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, top_p=0.95, compile=True))
    monkeypatch.setattr(compiled, "compile_backend", "aot_eager")
    counters.clear()
    want = eager.sample(c.backbone, c.conditioner, labels, seed=5)
    assert torch.equal(compiled.sample(c.backbone, c.conditioner, labels, seed=5), want)
    assert counters["stats"]["unique_graphs"] >= 1, "the step never went through torch.compile"
    assert all("GRU" in reason for reason in counters["graph_break"]), dict(counters["graph_break"])
    assert torch.equal(compiled.sample(c.backbone, c.conditioner, labels, seed=5), want)


def test_reproducibility_check_names_the_first_difference():
    from avgkit.testing.reproducibility import first_difference, sample_runs

    c = _components()
    runs = sample_runs(c.backbone, c.conditioner.eval(), ARSamplerConfig(cfg_scale=2.0, top_k=8, decode_width=4),
                       n=6, part=4, num_classes=10)
    assert first_difference(runs["once"], runs["again"]) is None
    assert first_difference(runs["once"], runs["parts"]) is None
    tampered = runs["once"].clone()
    tampered[4, 3] += 1
    assert first_difference(runs["once"], tampered) == "1 of 6 images differ (image 4 first at token 3)"


def test_a_captured_step_is_kept_per_autocast():
    """A step captured in fp32 must not replay under bf16 autocast (nor the reverse): the key holds the autocast."""
    c = _components()
    cond = c.conditioner(torch.tensor([1, 2]))
    plain = ARSampler._graph_key(c.backbone, cond, 2, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ARSampler._graph_key(c.backbone, cond, 2, None) != plain
    assert ARSampler._graph_key(c.backbone, cond, 2, None) == plain


def test_graph_capture_runs_without_the_autocast_weight_cache():
    from avgkit.sample.ar import _uncached_autocast

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _uncached_autocast("cpu"):
            assert not torch.is_autocast_cache_enabled() and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_cache_enabled()
    with _uncached_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_graph_captured_under_autocast_replays_in_a_later_autocast():
    """--precision bf16 samples each batch in its own autocast: the step graph captured in the first must give the
    same tokens in the second, whatever the memory freed in between now holds."""
    c = _components()
    backbone, conditioner = c.backbone.cuda().eval(), c.conditioner.cuda().eval()
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8))
    labels = torch.arange(4, device="cuda")
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            first = sampler.sample(backbone, conditioner, labels, seed=3)
        churn = [torch.full((1 << 20,), float(i), device="cuda") for i in range(64)]  # reuse what was freed
        with torch.autocast("cuda", dtype=torch.bfloat16):
            again = sampler.sample(backbone, conditioner, labels, seed=3)
        del churn
    assert torch.equal(first, again)


def test_active_autocast_dtype_answers_for_any_device_type():
    from avgkit.runtime.device import active_autocast_dtype

    assert active_autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert active_autocast_dtype(torch.device("cpu")) == torch.bfloat16
        assert active_autocast_dtype("meta") is None  # no autocast for it: a state built on meta has no autocast dtype
