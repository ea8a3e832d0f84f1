"""The built-in toy components pass the conformance suites, and broken ones fail them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avgkit.interfaces import Conditioning
from avgkit.sample.ar import ARSampler, ARSamplerConfig
from avgkit.testing.conformance import (
    BackboneSuite,
    ConditionerSuite,
    SamplerSuite,
    TokenizerSuite,
    check_backbone,
    check_conditioner,
    check_sampler,
    check_tokenizer,
)
from avgkit.testing.toys import (
    ToyClassConditioner,
    ToyClassConfig,
    ToyGRUBackbone,
    ToyGRUConfig,
    ToyPatchTokenizer,
)

CFG = ToyGRUConfig(dim=32, layers=2, vocab_size=16, num_tokens=9)


# ----------------------------------------------------------------------------- the toys conform
class TestToyGRU(BackboneSuite):
    vocab_size = 16
    num_tokens = 9

    def make_backbone(self):
        return ToyGRUBackbone(CFG)


class TestToyClassAdaLN(ConditionerSuite):
    def make_conditioner(self, dim, num_layers):
        return ToyClassConditioner(ToyClassConfig(), dim=dim, num_layers=num_layers)


class TestToyClassTokenOnly(ConditionerSuite):
    def make_conditioner(self, dim, num_layers):
        return ToyClassConditioner(ToyClassConfig(modulate=False, label_dropout=0.0), dim=dim, num_layers=num_layers)


class TestToyPatch(TokenizerSuite):
    exact_roundtrip = True

    def make_tokenizer(self):
        return ToyPatchTokenizer()


class TestARSampler(SamplerSuite):
    def make_sampler(self):
        return ARSampler(ARSamplerConfig(cfg_scale=3.0, top_k=8, top_p=0.9))


def test_report_lists_every_check_and_skip():
    report = check_tokenizer(ToyPatchTokenizer())  # an instance works too (deep-copied per check)
    assert report["roundtrip [cpu]"].startswith("skipped")
    assert report["encode [cpu]"] == "ok"
    with pytest.raises(ValueError, match="unknown conformance checks"):
        check_tokenizer(ToyPatchTokenizer(), only=["nope"])


# ----------------------------------------------------------------------------- broken components fail
class PeekingGRU(ToyGRUBackbone):
    """Sees the token it predicts."""

    def forward(self, codes, cond):
        x = torch.cat([cond.prefix, self.tok(codes)], dim=1)
        return self._run(x, cond, None)[0][:, cond.prefix_len :]


class ForgetfulGRU(ToyGRUBackbone):
    """Decoding steps ignore the state."""

    def step(self, state, tokens, cond):
        logits, _ = self._run(self.tok(tokens)[:, None], cond, None)
        return logits[:, -1]


class UnmodulatedGRU(ToyGRUBackbone):
    """Drops the conditioner's modulation."""

    def forward(self, codes, cond):
        return super().forward(codes, Conditioning(cond.prefix))


class ReallocatingGRU(ToyGRUBackbone):
    """Replaces its state tensors instead of writing into them."""

    def step(self, state, tokens, cond):
        logits, h = self._run(self.tok(tokens)[:, None], cond, state.hidden)
        state.hidden = torch.stack(h)
        return logits[:, -1]


class SyncingGRU(ToyGRUBackbone):
    """Reads a tensor back to the host inside step, which breaks CUDA-graph capture."""

    def step(self, state, tokens, cond):
        if int(tokens.max()) >= self.vocab_size:
            raise ValueError("token out of range")
        return super().step(state, tokens, cond)


class DeadParameterGRU(ToyGRUBackbone):
    def __init__(self, config):
        super().__init__(config)
        self.unused = nn.Linear(4, 4)


class TensorSettingsGRU(ToyGRUBackbone):
    """Reports its decoding settings as a dtype object, which no job record can hold."""

    def decode_settings(self, autocast=None):
        return {"state_dtype": torch.bfloat16}


class BatchDependentSampler(ARSampler):
    """Draws from one global stream, so a row's sample depends on its batch."""

    def sample(self, backbone, conditioner, labels, *, seed=0, index=None, dtype=None):
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty(labels.shape[0], backbone.num_tokens, dtype=torch.long)
        with torch.no_grad():
            cond = conditioner(labels)
            state = backbone.init_state(labels.shape[0])
            logits = backbone.prefill(state, cond)
            for k in range(backbone.num_tokens):
                if k:
                    logits = backbone.step(state, out[:, k - 1], cond)
                out[:, k] = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        return out


class OffByOneSampler(ARSampler):
    """Feeds back the previous token twice."""

    def sample(self, backbone, conditioner, labels, *, seed=0, index=None, dtype=None):
        with torch.no_grad():
            cond = conditioner(labels)
            state = backbone.init_state(labels.shape[0])
            logits = backbone.prefill(state, cond)
            out = torch.empty(labels.shape[0], backbone.num_tokens, dtype=torch.long)
            for k in range(backbone.num_tokens):
                if k:
                    logits = backbone.step(state, out[:, max(k - 2, 0)], cond)
                out[:, k] = logits.argmax(-1)
        return out


class ForwardDroppingConditioner(ToyClassConditioner):
    """Drops labels inside forward in training mode (the contract puts this in drop_labels)."""

    def forward(self, labels):
        if self.training:
            labels = self.drop_labels(labels)
        return super().forward(labels)


class RowMixingTokenizer(ToyPatchTokenizer):
    """Mixes up the rows of its batch (a reshape bug), so an image's codes depend on its batch."""

    def encode(self, images):
        return super().encode(images.flip(0))


@pytest.mark.parametrize(
    "cls, check",
    [
        (PeekingGRU, "causal"),
        (ForgetfulGRU, "decode_matches_forward"),
        (UnmodulatedGRU, "modulation"),
        (ReallocatingGRU, "state_static"),
        (DeadParameterGRU, "gradients"),
        (TensorSettingsGRU, "attributes"),
    ],
)
def test_broken_backbones_fail(cls, check):
    with pytest.raises(AssertionError, match=f"check '{check}' failed"):
        check_backbone(lambda: cls(CFG), only=[check])
    if check != "state_static":  # the toy itself passes the same check
        check_backbone(lambda: ToyGRUBackbone(CFG), only=[check])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_sync_in_step_fails_on_gpu():
    with pytest.raises(AssertionError, match="check 'cuda_graph_step' failed.*cannot be captured"):
        check_backbone(lambda: SyncingGRU(CFG), only=["cuda_graph_step"])
    check_backbone(lambda: ToyGRUBackbone(CFG), only=["cuda_graph_step", "cuda_matches_cpu"])


@pytest.mark.parametrize("sampler, check", [(BatchDependentSampler, "batch_independent"), (OffByOneSampler, "feeds_back")])
def test_broken_samplers_fail(sampler, check):
    with pytest.raises(AssertionError, match=f"check '{check}' failed"):
        check_sampler(sampler, only=[check])


def test_conditioner_dropping_in_forward_fails():
    make = lambda dim, n: ForwardDroppingConditioner(ToyClassConfig(label_dropout=0.5), dim=dim, num_layers=n)  # noqa: E731
    with pytest.raises(AssertionError, match="check 'label_dropout' failed.*only in drop_labels"):
        check_conditioner(make, only=["label_dropout"])


def test_batch_dependent_tokenizer_fails():
    with pytest.raises(AssertionError, match="check 'encode' failed.*depend on the rest of its batch"):
        check_tokenizer(RowMixingTokenizer, only=["encode"])
