"""Conformance checks for samplers (:class:`avgkit.interfaces.Sampler`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from avgkit.interfaces import Backbone, Conditioner, Conditioning, Sampler
from avgkit.testing.conformance._common import fail, perturb


def _toy_backbone() -> Backbone:
    from avgkit.testing.toys import ToyGRUBackbone, ToyGRUConfig

    return ToyGRUBackbone(ToyGRUConfig(dim=32, layers=2, vocab_size=16, num_tokens=12))


def _toy_conditioner(dim: int, num_layers: int) -> Conditioner:
    from avgkit.testing.toys import ToyClassConditioner, ToyClassConfig

    return ToyClassConditioner(ToyClassConfig(num_classes=10), dim=dim, num_layers=num_layers)


@dataclass
class _Counter:
    last: Tensor  # (B,) previous token (or first target after prefill)
    batch_size: int


class ScriptedBackbone(Backbone[_Counter]):
    """Logits that all but force a known sequence: token 0 = label, token k+1 = token k + 1 (mod V).

    A sampler that feeds back the wrong token, reads the wrong position or mixes rows
    produces anything else. The label is recovered from the conditioning prefix.
    """

    def __init__(self, vocab_size: int = 16, num_tokens: int = 10, strength: float = 40.0) -> None:
        super().__init__()
        self.dim, self.num_layers, self.vocab_size, self.num_tokens = 1, 1, vocab_size, num_tokens
        self.strength = strength
        self.anchor = nn.Parameter(torch.zeros(()))

    def _logits(self, target: Tensor) -> Tensor:
        return nn.functional.one_hot(target % self.vocab_size, self.vocab_size).float() * self.strength + self.anchor

    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:
        first = cond.prefix[:, 0, 0].round().long()
        prev = torch.cat([first[:, None] - 1, codes[:, :-1]], dim=1)
        return self._logits(prev + 1)

    def init_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> _Counter:
        return _Counter(torch.zeros(batch_size, dtype=torch.long, device=device), batch_size)

    def prefill(self, state: _Counter, cond: Conditioning) -> Tensor:
        state.last.copy_(cond.prefix[:, 0, 0].round().long())
        return self._logits(state.last)

    def step(self, state: _Counter, tokens: Tensor, cond: Conditioning) -> Tensor:
        state.last.copy_(tokens + 1)
        return self._logits(state.last)

    def select_state(self, state: _Counter, index: Tensor) -> _Counter:
        return _Counter(state.last.index_select(0, index), int(index.numel()))


class LabelValueConditioner(Conditioner):
    """Prefix = the label as a number (the null label included); no parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes, self.dim, self.num_layers = num_classes, 1, 1

    def forward(self, labels: Tensor) -> Conditioning:
        return Conditioning(prefix=labels.float()[:, None, None])


@dataclass
class SamplerCase:
    make_sampler: Callable[[], Sampler]
    make_backbone: Callable[[], Backbone] = _toy_backbone
    make_conditioner: Callable[[int, int], Conditioner] = _toy_conditioner
    device: str = "cpu"
    seed: int = 0
    perturb: float = 0.2
    sample_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"[{self.device}]"

    def build(self) -> tuple[Sampler, Backbone, Conditioner]:
        torch.manual_seed(self.seed)
        backbone = self.make_backbone()
        conditioner = self.make_conditioner(backbone.dim, backbone.num_layers)
        perturb(backbone, self.perturb, self.seed + 1)
        perturb(conditioner, self.perturb, self.seed + 2)
        return self.make_sampler(), backbone.to(self.device).eval(), conditioner.to(self.device).eval()

    def labels(self, conditioner: Conditioner, n: int = 5) -> Tensor:
        return ((torch.arange(n) * 3 + 1) % conditioner.num_classes).to(self.device)

    def sample(self, sampler: Sampler, b: Backbone, c: Conditioner, labels: Tensor, **kw: Any) -> Tensor:
        return sampler.sample(b, c, labels, **self.sample_kwargs, **kw)


def check_output(case: SamplerCase) -> None:
    sampler, backbone, conditioner = case.build()
    labels = case.labels(conditioner)
    codes = case.sample(sampler, backbone, conditioner, labels, seed=0)
    expected = (labels.numel(), backbone.num_tokens)
    if not isinstance(codes, Tensor) or tuple(codes.shape) != expected or codes.dtype != torch.long:
        fail(f"{case.where} sample returned {getattr(codes, 'dtype', type(codes))} "
             f"{tuple(getattr(codes, 'shape', ()))}, expected int64 {expected}")
    if codes.device.type != torch.device(case.device).type:
        fail(f"{case.where} codes are on {codes.device}, the labels on {case.device}")
    if codes.min() < 0 or codes.max() >= backbone.vocab_size:
        fail(f"{case.where} sampled codes outside [0, {backbone.vocab_size})")


def check_seeded(case: SamplerCase) -> None:
    sampler, backbone, conditioner = case.build()
    labels = case.labels(conditioner)
    a = case.sample(sampler, backbone, conditioner, labels, seed=3)
    if not torch.equal(a, case.sample(sampler, backbone, conditioner, labels, seed=3)):
        fail(f"{case.where} the same seed gave different samples")
    if torch.equal(a, case.sample(sampler, backbone, conditioner, labels, seed=4)):
        fail(f"{case.where} seeds 3 and 4 gave identical samples: the seed is ignored")


def check_batch_independent(case: SamplerCase) -> None:
    """Row r depends only on (seed, index[r], labels[r]): sub-batches, reorderings, repeats agree."""
    sampler, backbone, conditioner = case.build()
    labels = case.labels(conditioner)
    full = case.sample(sampler, backbone, conditioner, labels, seed=1)
    for rows in ([3, 1], [4], [2, 2, 0]):
        index = torch.tensor(rows, device=case.device)
        part = case.sample(sampler, backbone, conditioner, labels[index], seed=1, index=index)
        if not torch.equal(part, full[index]):
            fail(f"{case.where} rows {rows} sampled as their own batch differ from the same rows of the full "
                 "batch: a row's randomness must depend only on (seed, index, label)")


def check_feeds_back(case: SamplerCase) -> None:
    """With a backbone that all but dictates each token, the sampler reproduces its script."""
    sampler = case.make_sampler()
    backbone = ScriptedBackbone().to(case.device)
    conditioner = LabelValueConditioner().to(case.device)
    labels = torch.tensor([0, 3, 7], device=case.device)
    codes = case.sample(sampler, backbone, conditioner, labels, seed=0)
    expected = (labels[:, None] + torch.arange(backbone.num_tokens, device=case.device)) % backbone.vocab_size
    if not torch.equal(codes, expected):
        fail(f"{case.where} the sampler did not follow near-certain logits: got {codes[0].tolist()}, expected "
             f"{expected[0].tolist()} (wrong token fed back, wrong position, or rows mixed)")


def check_leaves_models_unchanged(case: SamplerCase) -> None:
    sampler, backbone, conditioner = case.build()
    before = {k: v.clone() for k, v in {**backbone.state_dict(), **conditioner.state_dict()}.items()}
    modes = (backbone.training, conditioner.training)
    case.sample(sampler, backbone, conditioner, case.labels(conditioner), seed=0)
    after = {**backbone.state_dict(), **conditioner.state_dict()}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if changed:
        fail(f"{case.where} sampling modified model tensors: {changed[:5]}")
    if (backbone.training, conditioner.training) != modes:
        fail(f"{case.where} sampling changed the train/eval mode of the models")


SAMPLER_CHECKS: dict[str, Callable[[SamplerCase], None]] = {
    "output": check_output,
    "seeded": check_seeded,
    "batch_independent": check_batch_independent,
    "feeds_back": check_feeds_back,
    "leaves_models_unchanged": check_leaves_models_unchanged,
}


def sampler_cases(sampler: Sampler | Callable[[], Sampler], *, device: str = "cpu",
                  **options: Any) -> list[SamplerCase]:
    """Cases for a sampler instance, or a class / zero-argument factory that makes one."""
    is_factory = isinstance(sampler, type) or not hasattr(sampler, "sample")
    make = sampler if is_factory else (lambda: sampler)
    return [SamplerCase(make, device=device, **options)]  # type: ignore[arg-type]
