"""Conformance checks for :class:`avgkit.interfaces.Backbone`.

Every check builds a fresh backbone and conditioner, perturbs their weights (so that
zero-initialised heads or gates cannot make a check pass trivially) and runs in
float32 on the case's device. Each check raises ``AssertionError`` naming the broken
promise, or :class:`ConformanceSkip` when it does not apply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Conditioning, DecodeState
from avgkit.testing.conformance._common import (
    ConformanceSkip,
    as_factory,
    assert_close,
    assert_differ,
    assert_finite,
    cuda_available,
    fail,
    grads_missing,
    perturb,
    short_list,
    tensors_in,
    weights_only_roundtrip,
)

#: builds a conditioner for a backbone of width ``dim`` with ``num_layers`` blocks
ConditionerFactory = Callable[[int, int], Conditioner]


def toy_conditioners(num_classes: int = 10) -> dict[str, ConditionerFactory]:
    """The built-in toy conditioner with adaLN-single modulation and as a class token only."""
    from avgkit.testing.toys import ToyClassConditioner, ToyClassConfig

    def make(modulate: bool) -> ConditionerFactory:
        cfg = ToyClassConfig(num_classes=num_classes, modulate=modulate, label_dropout=0.1)
        return lambda dim, num_layers: ToyClassConditioner(cfg, dim=dim, num_layers=num_layers)

    return {"toy-class adaLN": make(True), "toy-class token-only": make(False)}


def conditioner_factories(conditioner: object) -> dict[str, ConditionerFactory]:
    """Normalise the ``conditioner=`` argument: None, instance, factory, or a name -> either mapping."""
    if conditioner is None:
        return toy_conditioners()
    if isinstance(conditioner, Mapping):
        return {str(k): as_factory(v, Conditioner) for k, v in conditioner.items()}
    name = type(conditioner).__name__ if isinstance(conditioner, Conditioner) else getattr(conditioner, "__name__", "conditioner")
    return {name: as_factory(conditioner, Conditioner)}


@dataclass
class BackboneCase:
    """One backbone paired with one conditioner on one device."""

    make_backbone: Callable[[], Backbone]
    make_conditioner: ConditionerFactory
    conditioner_name: str = "conditioner"
    vocab_size: int | None = None
    num_tokens: int | None = None
    device: str = "cpu"
    batch_size: int = 3
    seed: int = 0
    atol: float = 1e-5
    perturb: float = 0.05

    @property
    def where(self) -> str:
        return f"[{self.conditioner_name}, {self.device}]"

    def build(self, seed: int | None = None, device: str | None = None) -> tuple[Backbone, Conditioner]:
        seed = self.seed if seed is None else seed
        torch.manual_seed(seed)
        backbone = self.make_backbone()
        if not isinstance(backbone, Backbone):
            fail(f"the backbone factory returned {type(backbone).__name__}, not an avgkit.interfaces.Backbone")
        conditioner = self.make_conditioner(backbone.dim, backbone.num_layers)
        perturb(backbone, self.perturb, seed + 1)
        perturb(conditioner, self.perturb, seed + 2)
        dev = device or self.device
        return backbone.to(dev).float().eval(), conditioner.to(dev).float().eval()

    def inputs(self, backbone: Backbone, conditioner: Conditioner, batch: int | None = None) -> tuple[Tensor, Tensor]:
        batch = batch or self.batch_size
        gen = torch.Generator().manual_seed(self.seed + 3)
        codes = torch.randint(0, backbone.vocab_size, (batch, backbone.num_tokens), generator=gen)
        labels = (torch.arange(batch) * 7 + 1) % conditioner.num_classes
        return codes.to(self.device), labels.to(self.device)


def _decode(backbone: Backbone, cond: Conditioning, codes: Tensor, steps: int | None = None) -> Tensor:
    """Logits ``(B, steps + 1, V)`` from prefill then teacher-fed steps."""
    state = backbone.init_state(cond.batch_size, device=codes.device, dtype=torch.float32)
    out = [backbone.prefill(state, cond)]
    for k in range(backbone.num_tokens - 1 if steps is None else steps):
        out.append(backbone.step(state, codes[:, k], cond))
    return torch.stack(out, 1)


@contextmanager
def _full_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN (GRU, conv): CUDA results comparable with the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------- checks
def check_attributes(case: BackboneCase) -> None:
    backbone, conditioner = case.build()
    for attr in ("dim", "num_layers", "vocab_size", "num_tokens"):
        value = getattr(backbone, attr, None)
        if not isinstance(value, int) or value < 1:
            fail(f"{case.where} backbone.{attr} must be a positive int, got {value!r}")
    for attr, expected in (("vocab_size", case.vocab_size), ("num_tokens", case.num_tokens)):
        if expected is not None and getattr(backbone, attr) != expected:
            fail(f"{case.where} backbone.{attr} is {getattr(backbone, attr)}, expected {expected}")
    params = {id(p) for p in backbone.parameters()}
    if any(id(p) not in params for p in backbone.embedding_parameters()):
        fail(f"{case.where} embedding_parameters() returns tensors that are not parameters of the backbone")
    if conditioner.dim != backbone.dim:
        fail(f"{case.where} conditioner built with dim {conditioner.dim} for a backbone of dim {backbone.dim}")
    for autocast in (None, torch.bfloat16):  # a sampling job writes them into job.json
        settings = backbone.decode_settings(autocast)
        try:
            if not isinstance(settings, dict) or json.loads(json.dumps(settings)) != settings:
                raise TypeError
        except (TypeError, ValueError):
            fail(f"{case.where} decode_settings({autocast}) must return a dict of JSON values, got {settings!r}")


def check_forward(case: BackboneCase) -> None:
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    with torch.no_grad():
        cond = conditioner(labels)
        logits = backbone(codes, cond)
        again = backbone(codes, cond)
    expected = (case.batch_size, backbone.num_tokens, backbone.vocab_size)
    if tuple(logits.shape) != expected:
        fail(f"{case.where} forward returned logits {tuple(logits.shape)}, expected (B, N, V) = {expected}")
    if not logits.is_floating_point():
        fail(f"{case.where} forward returned {logits.dtype} logits, expected a floating dtype")
    if logits.device.type != torch.device(case.device).type:
        fail(f"{case.where} logits are on {logits.device}, the inputs on {case.device}")
    assert_finite(logits, f"{case.where} forward logits")
    assert_close(again, logits, f"{case.where} eval-mode forward is not deterministic", case.atol)


def check_causal(case: BackboneCase) -> None:
    """``logits[:, k]`` may depend on ``codes[:, :k]`` only, and must depend on some past code."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    j = backbone.num_tokens // 2
    changed = codes.clone()
    changed[:, j] = (codes[:, j] + 1) % backbone.vocab_size
    with torch.no_grad():
        cond = conditioner(labels)
        a, b = backbone(codes, cond), backbone(changed, cond)
    assert_close(b[:, : j + 1], a[:, : j + 1], f"{case.where} changing code {j} changed logits at positions <= {j} "
                 "(logits[:, k] must see only codes[:, :k])", case.atol)
    if j + 1 < backbone.num_tokens:
        assert_differ(a[:, j + 1 :], b[:, j + 1 :], f"{case.where} changing code {j} changed no later logits: "
                      "the backbone ignores its input tokens", case.atol)


def check_uses_condition(case: BackboneCase) -> None:
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    with torch.no_grad():
        a = backbone(codes, conditioner(labels))
        b = backbone(codes, conditioner((labels + 1) % conditioner.num_classes))
    assert_differ(a[:, 0], b[:, 0], f"{case.where} logits for token 0 do not depend on the label: "
                  "the backbone ignores the conditioning prefix", case.atol)


def check_modulation(case: BackboneCase) -> None:
    """Every block reads ``cond.modulation(i)`` and the head reads ``cond.final_modulation()``."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    with torch.no_grad():
        cond = conditioner(labels)
        if cond.layers is None and cond.final is None:
            raise ConformanceSkip("the conditioner gives no modulation")
        base = backbone(codes, cond)
        if cond.layers is not None:
            if cond.layers.shape[0] != backbone.num_layers:
                fail(f"{case.where} conditioning has {cond.layers.shape[0]} layer modulations for "
                     f"{backbone.num_layers} backbone layers")
            for i in range(backbone.num_layers):
                for part, name in enumerate(("shift", "scale", "gate")):
                    layers = cond.layers.clone()
                    layers[i, :, part] += 0.5
                    out = backbone(codes, Conditioning(cond.prefix, layers, cond.final))
                    assert_differ(base, out, f"{case.where} block {i} ignores its modulation {name} "
                                  f"(cond.modulation({i}).{name})", case.atol)
        if cond.final is not None:
            for part, name in enumerate(("shift", "scale")):
                final = cond.final.clone()
                final[:, part] += 0.5
                out = backbone(codes, Conditioning(cond.prefix, cond.layers, final))
                assert_differ(base, out, f"{case.where} the head ignores cond.final_modulation().{name}", case.atol)


def check_decode_matches_forward(case: BackboneCase) -> None:
    """prefill + step, fed the true codes, gives the teacher-forced logits (float32)."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    with torch.no_grad():
        cond = conditioner(labels)
        expected = backbone(codes, cond)
        state = backbone.init_state(case.batch_size, device=case.device, dtype=torch.float32)
        if not isinstance(state, DecodeState) or state.batch_size != case.batch_size:
            fail(f"{case.where} init_state must return an object with batch_size == {case.batch_size}")
        first = backbone.prefill(state, cond)
        if tuple(first.shape) != (case.batch_size, backbone.vocab_size):
            fail(f"{case.where} prefill returned {tuple(first.shape)}, expected (B, V)")
        assert_close(first, expected[:, 0], f"{case.where} prefill logits differ from forward logits[:, 0]", case.atol)
        for k in range(backbone.num_tokens - 1):
            logits = backbone.step(state, codes[:, k], cond)
            if tuple(logits.shape) != (case.batch_size, backbone.vocab_size):
                fail(f"{case.where} step returned {tuple(logits.shape)}, expected (B, V)")
            assert_close(logits, expected[:, k + 1],
                         f"{case.where} step {k} logits differ from forward logits[:, {k + 1}]", case.atol)


def check_state_static(case: BackboneCase) -> None:
    """The state's tensors are allocated once and updated in place (CUDA-graph capturable)."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    with torch.no_grad():
        cond = conditioner(labels)
        state = backbone.init_state(case.batch_size, device=case.device, dtype=torch.float32)
        # the tensors themselves are held, not just their addresses: a reallocated tensor could otherwise be
        # handed the freed block of the original and pass for it
        before = dict(tensors_in(state))
        if not before:
            raise ConformanceSkip("the decoding state holds no tensors")
        backbone.prefill(state, cond)
        for k in range(min(3, backbone.num_tokens - 1)):
            backbone.step(state, codes[:, k], cond)
        after = dict(tensors_in(state))
    moved = [p or "(state)" for p, t in before.items()
             if p not in after or after[p].data_ptr() != t.data_ptr() or after[p].shape != t.shape]
    if moved:
        fail(f"{case.where} decoding reallocated state tensors {short_list(moved)}; allocate them at full size "
             "in init_state and write in place so a CUDA graph can capture the step")


def check_select_state(case: BackboneCase) -> None:
    """``select_state`` keeps chosen rows, and both states then decode independently."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    index = torch.arange(case.batch_size - 1, -1, -2, device=case.device)  # reversed, every other row
    warm = min(2, backbone.num_tokens - 1)
    with torch.no_grad():
        cond = conditioner(labels)
        expected = backbone(codes, cond)
        state = backbone.init_state(case.batch_size, device=case.device, dtype=torch.float32)
        backbone.prefill(state, cond)
        for k in range(warm):
            backbone.step(state, codes[:, k], cond)
        picked = backbone.select_state(state, index)
        if picked.batch_size != index.numel():
            fail(f"{case.where} select_state gave batch_size {picked.batch_size}, expected {index.numel()}")
        sub = cond.select(index)
        for k in range(warm, backbone.num_tokens - 1):
            full = backbone.step(state, codes[:, k], cond)
            part = backbone.step(picked, codes[index, k], sub)
            assert_close(full, expected[:, k + 1], f"{case.where} the original state changed after select_state "
                         f"(step {k})", case.atol)
            assert_close(part, expected[index, k + 1], f"{case.where} selected state rows differ from teacher "
                         f"forcing at step {k}", case.atol)


def check_state_dict_roundtrip(case: BackboneCase) -> None:
    """state_dict -> torch.save/load(weights_only) -> a new instance -> the same logits."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    state = weights_only_roundtrip(backbone.state_dict())
    fresh, _ = case.build(seed=case.seed + 100)
    try:
        fresh.load_state_dict(state)
    except RuntimeError as err:
        fail(f"{case.where} a new backbone does not load the state_dict: {err}")
    with torch.no_grad():
        cond = conditioner(labels)
        assert_close(fresh(codes, cond), backbone(codes, cond),
                     f"{case.where} logits differ after a state_dict round trip", case.atol)


def check_gradients(case: BackboneCase) -> None:
    """A training forward + cross-entropy reaches every parameter of backbone and conditioner."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    backbone.train()
    conditioner.train()
    logits = backbone(codes, conditioner(labels))
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1))
    loss.backward()
    bad = grads_missing({"backbone": backbone, "conditioner": conditioner})
    if bad:
        fail(f"{case.where} parameters without a useful gradient after a training step: {short_list(bad)}")


def check_meta_build(case: BackboneCase) -> None:
    """The factory builds on the meta device (how ``--dry-run`` counts parameters)."""
    with torch.device("meta"):
        meta = case.make_backbone()
    real = case.make_backbone()
    counts = sum(p.numel() for p in meta.parameters()), sum(p.numel() for p in real.parameters())
    if counts[0] != counts[1]:
        fail(f"{case.where} a meta-device build has {counts[0]} parameters, a normal one {counts[1]}")


def check_bf16(case: BackboneCase) -> None:
    """bfloat16 weights, conditioning and state run and give finite logits of the right shape."""
    backbone, conditioner = case.build()
    codes, labels = case.inputs(backbone, conditioner)
    backbone.to(torch.bfloat16)
    with torch.no_grad():
        cond = conditioner(labels).to(torch.bfloat16)
        logits = backbone(codes, cond)
        state = backbone.init_state(case.batch_size, device=case.device, dtype=torch.bfloat16)
        first = backbone.prefill(state, cond)
        nxt = backbone.step(state, codes[:, 0], cond)
    for what, x, shape in (("forward", logits, (case.batch_size, backbone.num_tokens, backbone.vocab_size)),
                           ("prefill", first, (case.batch_size, backbone.vocab_size)),
                           ("step", nxt, (case.batch_size, backbone.vocab_size))):
        if tuple(x.shape) != shape or not x.is_floating_point():
            fail(f"{case.where} bf16 {what} returned {x.dtype} {tuple(x.shape)}, expected floating {shape}")
        assert_finite(x, f"{case.where} bf16 {what} logits")


def check_cuda_matches_cpu(case: BackboneCase) -> None:
    """The same weights give the same logits on CPU and CUDA (TF32 off)."""
    if not cuda_available():
        raise ConformanceSkip("no CUDA device")
    cpu_case = replace(case, device="cpu")
    gpu_case = replace(case, device="cuda")
    b_cpu, c_cpu = cpu_case.build()
    b_gpu, c_gpu = gpu_case.build()
    codes, labels = cpu_case.inputs(b_cpu, c_cpu)
    with _full_fp32(), torch.no_grad():
        ref = b_cpu(codes, c_cpu(labels))
        out = b_gpu(codes.cuda(), c_gpu(labels.cuda())).cpu()
        dec = _decode(b_gpu, c_gpu(labels.cuda()), codes.cuda()).cpu()
    assert_close(out, ref, f"{case.where} CUDA forward differs from CPU", 1e-4)
    assert_close(dec, ref, f"{case.where} CUDA decoding differs from CPU teacher forcing", 1e-4)


def check_cuda_graph_step(case: BackboneCase) -> None:
    """``step`` can be captured in a CUDA graph and replayed (how the AR sampler runs it on GPUs)."""
    if not cuda_available():
        raise ConformanceSkip("no CUDA device")
    gpu = replace(case, device="cuda")
    backbone, conditioner = gpu.build()
    codes, labels = gpu.inputs(backbone, conditioner)
    with _full_fp32(), torch.no_grad():
        cond = conditioner(labels)
        expected = backbone(codes, cond)
        state = backbone.init_state(gpu.batch_size, device="cuda", dtype=torch.float32)
        token = codes[:, 0].clone()
        backbone.prefill(state, cond)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (allocations, compilation)
            backbone.step(state, token, cond)
        torch.cuda.current_stream().wait_stream(side)
        backbone.prefill(state, cond)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = backbone.step(state, token, cond)
        except Exception as err:  # a host sync or a new allocation pattern breaks capture
            fail(f"{case.where} step cannot be captured in a CUDA graph ({type(err).__name__}: "
                 f"{str(err).splitlines()[0]}); avoid .item(), host tensors and data-dependent Python branches")
        backbone.prefill(state, cond)
        for k in range(backbone.num_tokens - 1):
            token.copy_(codes[:, k])
            graph.replay()
            assert_close(out, expected[:, k + 1], f"{case.where} replayed CUDA-graph step {k} differs from "
                         "teacher forcing", 1e-4)


#: the longest prefix :func:`check_padded_prefix` hands a backbone (3 real vectors + 3 of padding)
PADDED_PREFIX_LEN = 6


def check_padded_prefix(case: BackboneCase) -> None:
    """A padded prefix gives each row the logits of its real vectors alone, in training and decoding.

    Rows carry 1 to 3 real prefix vectors, padded to 6 on the left, on the right or
    both, with large random values in the padding; forward and prefill + steps must
    match the forward pass of each row's unpadded prefix. A recurrent state must not
    absorb padded positions. Backbones that leave ``accepts_prefix_mask`` False skip.
    """
    backbone, conditioner = case.build()
    if not getattr(backbone, "accepts_prefix_mask", False):
        raise ConformanceSkip("the backbone does not accept padded prefixes (accepts_prefix_mask is False)")
    codes, labels = case.inputs(backbone, conditioner)
    gen = torch.Generator().manual_seed(case.seed + 11)
    with torch.no_grad():
        cond = conditioner(labels)
        b, d = cond.batch_size, cond.prefix.shape[-1]
        extra = (torch.randn(b, 2, d, generator=gen) * 0.5).to(cond.prefix)
        real = torch.cat([extra, cond.prefix[:, -1:]], 1)  # (B, 3, D): the last vector is the condition's own
        counts = [1 + (r % 3) for r in range(b)]
        expected = []
        for r in range(b):
            one = Conditioning(real[r : r + 1, 3 - counts[r] :], None if cond.layers is None else cond.layers[:, r : r + 1],
                               None if cond.final is None else cond.final[r : r + 1])
            expected.append(backbone(codes[r : r + 1], one))
        want = torch.cat(expected)
        for layout in ("left", "right", "both"):
            prefix = (torch.randn(b, PADDED_PREFIX_LEN, d, generator=gen) * 3).to(cond.prefix)
            mask = torch.zeros(b, PADDED_PREFIX_LEN, dtype=torch.bool)
            for r in range(b):
                n = counts[r]
                start = {"left": PADDED_PREFIX_LEN - n, "right": 0, "both": (PADDED_PREFIX_LEN - n) // 2}[layout]
                prefix[r, start : start + n] = real[r, 3 - n :]
                mask[r, start : start + n] = True
            padded = Conditioning(prefix, cond.layers, cond.final, mask.to(prefix.device))
            got = backbone(codes, padded)
            assert_close(got, want, f"{case.where} forward logits change when the prefix is padded ({layout}): "
                         "padded positions must not reach real ones", case.atol)
            decoded = _decode(backbone, padded, codes)
            assert_close(decoded, want, f"{case.where} prefill + step logits change when the prefix is padded "
                         f"({layout}): the decoding state must not absorb padded positions", case.atol)


def check_sampling(case: BackboneCase) -> None:
    """Through the built-in AR sampler with CFG: same seed -> same codes; rows ignore their batch."""
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    backbone, conditioner = case.build()
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0))
    labels = (torch.arange(4, device=case.device) * 3 + 1) % conditioner.num_classes
    a = sampler.sample(backbone, conditioner, labels, seed=5)
    if tuple(a.shape) != (4, backbone.num_tokens) or a.dtype != torch.long:
        fail(f"{case.where} sampling gave {a.dtype} {tuple(a.shape)}, expected int64 (B, N)")
    if a.min() < 0 or a.max() >= backbone.vocab_size:
        fail(f"{case.where} sampled codes outside [0, {backbone.vocab_size})")
    if not torch.equal(sampler.sample(backbone, conditioner, labels, seed=5), a):
        fail(f"{case.where} sampling twice with the same seed gave different codes")
    index = torch.tensor([3, 1], device=case.device)
    part = sampler.sample(backbone, conditioner, labels[index], seed=5, index=index)
    if not torch.equal(part, a[index]):
        fail(f"{case.where} a row's sample depends on the other rows of its batch "
             "(rows 3 and 1 sampled alone differ from the same rows in a batch of 4)")
    if torch.equal(sampler.sample(backbone, conditioner, labels, seed=6), a):
        fail(f"{case.where} seeds 5 and 6 gave identical samples")


BACKBONE_CHECKS: dict[str, Callable[[BackboneCase], None]] = {
    "attributes": check_attributes,
    "forward": check_forward,
    "causal": check_causal,
    "uses_condition": check_uses_condition,
    "modulation": check_modulation,
    "decode_matches_forward": check_decode_matches_forward,
    "state_static": check_state_static,
    "select_state": check_select_state,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "gradients": check_gradients,
    "meta_build": check_meta_build,
    "bf16": check_bf16,
    "cuda_matches_cpu": check_cuda_matches_cpu,
    "cuda_graph_step": check_cuda_graph_step,
    "sampling": check_sampling,
    "padded_prefix": check_padded_prefix,
}


def backbone_cases(
    backbone: Backbone | Callable[[], Backbone],
    *,
    conditioner: object = None,
    vocab_size: int | None = None,
    num_tokens: int | None = None,
    device: str = "cpu",
    **options: object,
) -> list[BackboneCase]:
    make = as_factory(backbone, Backbone)
    return [
        BackboneCase(make, factory, name, vocab_size, num_tokens, device, **options)  # type: ignore[arg-type]
        for name, factory in conditioner_factories(conditioner).items()
    ]
