"""Conformance checks for :class:`avgkit.interfaces.Conditioner`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from avgkit.interfaces import Conditioner, Conditioning
from avgkit.testing.conformance._common import (
    as_factory,
    assert_close,
    assert_differ,
    assert_finite,
    fail,
    grads_missing,
    perturb,
    short_list,
    weights_only_roundtrip,
)


@dataclass
class ConditionerCase:
    make_conditioner: Callable[[int, int], Conditioner]
    dim: int = 32
    num_layers: int = 3
    device: str = "cpu"
    batch_size: int = 4
    seed: int = 0
    atol: float = 1e-5
    perturb: float = 0.05

    @property
    def where(self) -> str:
        return f"[dim {self.dim}, {self.num_layers} layers, {self.device}]"

    def build(self, seed: int | None = None) -> Conditioner:
        seed = self.seed if seed is None else seed
        torch.manual_seed(seed)
        cond = self.make_conditioner(self.dim, self.num_layers)
        if not isinstance(cond, Conditioner):
            fail(f"the conditioner factory returned {type(cond).__name__}, not an avgkit.interfaces.Conditioner")
        return perturb(cond, self.perturb, seed + 1).to(self.device).float().eval()

    def labels(self, cond: Conditioner) -> Tensor:
        return ((torch.arange(self.batch_size) * 7 + 1) % cond.num_classes).to(self.device)


def _parts(c: Conditioning) -> dict[str, Tensor]:
    return {k: v for k, v in (("prefix", c.prefix), ("layers", c.layers), ("final", c.final)) if v is not None}


def _assert_same(a: Conditioning, b: Conditioning, what: str, atol: float) -> None:
    pa, pb = _parts(a), _parts(b)
    if pa.keys() != pb.keys():
        fail(f"{what}: parts {sorted(pa)} vs {sorted(pb)}")
    for k in pa:
        assert_close(pa[k], pb[k], f"{what} ({k})", atol)


def check_attributes(case: ConditionerCase) -> None:
    cond = case.build()
    for attr in ("num_classes", "dim", "num_layers", "prefix_len"):
        value = getattr(cond, attr, None)
        if not isinstance(value, int) or value < 1:
            fail(f"{case.where} conditioner.{attr} must be a positive int, got {value!r}")
    if (cond.dim, cond.num_layers) != (case.dim, case.num_layers):
        fail(f"{case.where} conditioner reports dim {cond.dim} / {cond.num_layers} layers, built with "
             f"{case.dim} / {case.num_layers}")
    if not 0.0 <= float(cond.label_dropout) <= 1.0:
        fail(f"{case.where} label_dropout {cond.label_dropout} is not a probability")
    params = {id(p) for p in cond.parameters()}
    if any(id(p) not in params for p in cond.embedding_parameters()):
        fail(f"{case.where} embedding_parameters() returns tensors that are not parameters of the conditioner")


def check_output(case: ConditionerCase) -> None:
    cond = case.build()
    labels = case.labels(cond)
    with torch.no_grad():
        out = cond(labels)
        again = cond(labels)
    if not isinstance(out, Conditioning):
        fail(f"{case.where} forward returned {type(out).__name__}, expected avgkit.interfaces.Conditioning")
    b, d, n = case.batch_size, case.dim, case.num_layers
    expected = {"prefix": (b, cond.prefix_len, d), "layers": (n, b, 3, d), "final": (b, 2, d)}
    for name, tensor in _parts(out).items():
        if tuple(tensor.shape) != expected[name]:
            fail(f"{case.where} conditioning.{name} is {tuple(tensor.shape)}, expected {expected[name]}")
        if not tensor.is_floating_point():
            fail(f"{case.where} conditioning.{name} is {tensor.dtype}, expected a floating dtype")
        if tensor.device.type != torch.device(case.device).type:
            fail(f"{case.where} conditioning.{name} is on {tensor.device}, the labels on {case.device}")
        assert_finite(tensor, f"{case.where} conditioning.{name}")
    _assert_same(again, out, f"{case.where} eval-mode forward is not deterministic", case.atol)


def check_rows_independent(case: ConditionerCase) -> None:
    cond = case.build()
    labels = case.labels(cond)
    index = torch.tensor([2, 0, 2], device=case.device) % case.batch_size
    with torch.no_grad():
        _assert_same(cond(labels[index]), cond(labels).select(index),
                     f"{case.where} a row's conditioning depends on the rest of its batch", case.atol)


def check_null(case: ConditionerCase) -> None:
    cond = case.build()
    with torch.no_grad():
        null = cond.null(case.batch_size, case.device)
        direct = cond(torch.full((case.batch_size,), cond.null_label, dtype=torch.long, device=case.device))
        real = cond(case.labels(cond))
    if null.batch_size != case.batch_size:
        fail(f"{case.where} null({case.batch_size}) has batch size {null.batch_size}")
    _assert_same(null, direct, f"{case.where} null() differs from forward(null_label)", case.atol)
    assert_differ(null.prefix, real.prefix, f"{case.where} the null condition equals a real class's", case.atol)


def check_labels_matter(case: ConditionerCase) -> None:
    cond = case.build()
    labels = case.labels(cond)
    with torch.no_grad():
        a, b = cond(labels), cond((labels + 1) % cond.num_classes)
    pa, pb = _parts(a), _parts(b)
    if all(float((pa[k] - pb[k]).abs().max()) <= case.atol for k in pa):
        fail(f"{case.where} different labels give the same conditioning")


def check_label_dropout(case: ConditionerCase) -> None:
    """``drop_labels`` maps labels to null at rate ``label_dropout``, reproducibly; forward never drops."""
    cond = case.build()
    n = 20000
    labels = (torch.arange(n) % cond.num_classes).to(case.device)
    gen = lambda: torch.Generator(device=case.device).manual_seed(case.seed)  # noqa: E731
    dropped = cond.drop_labels(labels, gen())
    if dropped.shape != labels.shape or dropped.dtype != labels.dtype:
        fail(f"{case.where} drop_labels changed shape/dtype to {dropped.dtype} {tuple(dropped.shape)}")
    if not torch.equal(cond.drop_labels(labels, gen()), dropped):
        fail(f"{case.where} drop_labels with the same generator seed gave different results")
    kept = dropped == labels
    nulls = dropped == cond.null_label
    if not (kept | nulls).all():
        fail(f"{case.where} drop_labels produced labels other than the input or the null label")
    p = float(cond.label_dropout)
    rate = float(nulls.float().mean())
    tol = 5 * (p * (1 - p) / n) ** 0.5 + 1e-9
    if abs(rate - p) > tol:
        fail(f"{case.where} drop_labels nulled {rate:.4f} of labels, label_dropout is {p}")
    cond.train()
    with torch.no_grad():
        train_out = cond(labels[:256])
    cond.eval()
    with torch.no_grad():
        eval_out = cond(labels[:256])
    _assert_same(train_out, eval_out, f"{case.where} a train-mode forward differs from eval mode: label dropout "
                 "must happen only in drop_labels (called by the trainer)", case.atol)


def check_state_dict_roundtrip(case: ConditionerCase) -> None:
    cond = case.build()
    state = weights_only_roundtrip(cond.state_dict())
    fresh = case.build(seed=case.seed + 100)
    try:
        fresh.load_state_dict(state)
    except RuntimeError as err:
        fail(f"{case.where} a new conditioner does not load the state_dict: {err}")
    labels = case.labels(cond)
    with torch.no_grad():
        _assert_same(fresh(labels), cond(labels), f"{case.where} outputs differ after a state_dict round trip",
                     case.atol)


def check_gradients(case: ConditionerCase) -> None:
    cond = case.build().train()
    labels = case.labels(cond)
    out = cond(labels)
    loss = cast(Tensor, sum(t.float().pow(2).sum() for t in _parts(out).values()))  # the prefix is always there
    loss.backward()
    # rows of unused classes get no gradient; the tables as a whole must
    bad = grads_missing({"conditioner": cond})
    if bad:
        fail(f"{case.where} parameters without a gradient: {short_list(bad)}")


def check_pairs_with_toy_backbone(case: ConditionerCase) -> None:
    """Its conditioning drives the built-in toy backbone (shape agreement with the contract)."""
    from avgkit.testing.toys import ToyGRUBackbone, ToyGRUConfig

    cond = case.build()
    backbone = ToyGRUBackbone(ToyGRUConfig(dim=case.dim, layers=case.num_layers, vocab_size=8, num_tokens=4))
    backbone.to(case.device).eval()
    codes = torch.randint(0, 8, (case.batch_size, 4), device=case.device)
    with torch.no_grad():
        logits = backbone(codes, cond(case.labels(cond)))
    if tuple(logits.shape) != (case.batch_size, 4, 8):
        fail(f"{case.where} the toy backbone gave logits {tuple(logits.shape)} with this conditioning")


CONDITIONER_CHECKS: dict[str, Callable[[ConditionerCase], None]] = {
    "attributes": check_attributes,
    "output": check_output,
    "rows_independent": check_rows_independent,
    "null": check_null,
    "labels_matter": check_labels_matter,
    "label_dropout": check_label_dropout,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "gradients": check_gradients,
    "pairs_with_toy_backbone": check_pairs_with_toy_backbone,
}


def conditioner_cases(
    conditioner: Conditioner | Callable[[int, int], Conditioner],
    *,
    dim: int = 32,
    num_layers: int = 3,
    device: str = "cpu",
    **options: object,
) -> list[ConditionerCase]:
    """Cases for ``conditioner`` (an instance fixes ``dim`` and ``num_layers`` to its own)."""
    if isinstance(conditioner, Conditioner):
        dim, num_layers = conditioner.dim, conditioner.num_layers
    return [ConditionerCase(as_factory(conditioner, Conditioner), dim, num_layers, device, **options)]  # type: ignore[arg-type]
