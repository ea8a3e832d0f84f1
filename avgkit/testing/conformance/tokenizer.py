"""Conformance checks for :class:`avgkit.interfaces.Tokenizer`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from avgkit.interfaces import Tokenizer
from avgkit.testing.conformance._common import (
    ConformanceSkip,
    as_factory,
    assert_close,
    assert_finite,
    fail,
    weights_only_roundtrip,
)


@dataclass
class TokenizerCase:
    make_tokenizer: Callable[[], Tokenizer]
    device: str = "cpu"
    batch_size: int = 2
    seed: int = 0
    atol: float = 1e-4
    #: ``encode(decode(codes)) == codes`` holds exactly (lossless on its own codes)
    exact_roundtrip: bool = False

    @property
    def where(self) -> str:
        return f"[{self.device}]"

    def build(self) -> Tokenizer:
        torch.manual_seed(self.seed)
        tok = self.make_tokenizer()
        if not isinstance(tok, Tokenizer):
            fail(f"the tokenizer factory returned {type(tok).__name__}, not an avgkit.interfaces.Tokenizer")
        return tok.to(self.device).float().eval()

    def images(self, tok: Tokenizer) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1)
        x = torch.rand(self.batch_size, tok.channels, *tok.image_hw, generator=gen) * 2 - 1
        return x.to(self.device)

    def codes(self, tok: Tokenizer) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed + 2)
        return torch.randint(0, tok.codebook_size, (self.batch_size, tok.num_tokens), generator=gen).to(self.device)


def check_attributes(case: TokenizerCase) -> None:
    tok = case.build()
    for attr in ("codebook_size", "channels"):
        value = getattr(tok, attr, None)
        if not isinstance(value, int) or value < 1:
            fail(f"{case.where} tokenizer.{attr} must be a positive int, got {value!r}")
    size = getattr(tok, "image_size", None)
    if not (isinstance(size, int) and size >= 1 or isinstance(size, tuple) and len(size) == 2
            and all(isinstance(s, int) and s >= 1 for s in size)):
        fail(f"{case.where} tokenizer.image_size must be a positive int or a tuple (H, W) of them, got {size!r}")
    grid = getattr(tok, "grid", None)
    if not (isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        fail(f"{case.where} tokenizer.grid must be a tuple of two positive ints, got {grid!r}")
    if tok.num_tokens != grid[0] * grid[1]:
        fail(f"{case.where} num_tokens {tok.num_tokens} != grid {grid} product")


def check_encode(case: TokenizerCase) -> None:
    tok = case.build()
    images = case.images(tok)
    with torch.no_grad():
        codes = tok.encode(images)
        again = tok.encode(images)
    if tuple(codes.shape) != (case.batch_size, tok.num_tokens) or codes.dtype != torch.long:
        fail(f"{case.where} encode gave {codes.dtype} {tuple(codes.shape)}, expected int64 "
             f"{(case.batch_size, tok.num_tokens)}")
    if codes.min() < 0 or codes.max() >= tok.codebook_size:
        fail(f"{case.where} encode gave codes outside [0, {tok.codebook_size})")
    if not torch.equal(codes, again):
        fail(f"{case.where} encoding the same images twice gave different codes")
    for rows in ([case.batch_size - 1, 0], [case.batch_size - 1]):
        index = torch.tensor(rows, device=case.device)
        with torch.no_grad():
            part = tok.encode(images[index])
        if not torch.equal(part, codes[index]):
            fail(f"{case.where} an image's codes depend on the rest of its batch (rows {rows} encoded alone)")


def check_decode(case: TokenizerCase) -> None:
    tok = case.build()
    codes = case.codes(tok)
    with torch.no_grad():
        images = tok.decode(codes)
    expected = (case.batch_size, tok.channels, *tok.image_hw)
    if tuple(images.shape) != expected or not images.is_floating_point():
        fail(f"{case.where} decode gave {images.dtype} {tuple(images.shape)}, expected floating {expected}")
    assert_finite(images, f"{case.where} decoded images")
    for rows in ([case.batch_size - 1, 0], [case.batch_size - 1]):
        index = torch.tensor(rows, device=case.device)
        with torch.no_grad():
            part = tok.decode(codes[index])
        assert_close(part, images[index], f"{case.where} a decoded image depends on the rest of its batch "
                     f"(rows {rows} decoded alone)", case.atol)


def check_roundtrip(case: TokenizerCase) -> None:
    if not case.exact_roundtrip:
        raise ConformanceSkip("exact_roundtrip not claimed")
    tok = case.build()
    codes = case.codes(tok)
    with torch.no_grad():
        again = tok.encode(tok.decode(codes))
    if not torch.equal(again, codes):
        fail(f"{case.where} encode(decode(codes)) != codes ({int((again != codes).sum())} codes differ)")


def check_state_dict_roundtrip(case: TokenizerCase) -> None:
    tok = case.build()
    if not list(tok.parameters()):
        raise ConformanceSkip("the tokenizer has no parameters")
    state = weights_only_roundtrip(tok.state_dict())
    fresh = case.build()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(0.01)
    fresh.load_state_dict(state)
    codes = case.codes(tok)
    with torch.no_grad():
        assert_close(fresh.decode(codes), tok.decode(codes),
                     f"{case.where} decoded images differ after a state_dict round trip", case.atol)


TOKENIZER_CHECKS: dict[str, Callable[[TokenizerCase], None]] = {
    "attributes": check_attributes,
    "encode": check_encode,
    "decode": check_decode,
    "roundtrip": check_roundtrip,
    "state_dict_roundtrip": check_state_dict_roundtrip,
}


def tokenizer_cases(tokenizer: Tokenizer | Callable[[], Tokenizer], *, device: str = "cpu",
                    **options: object) -> list[TokenizerCase]:
    return [TokenizerCase(as_factory(tokenizer, Tokenizer), device, **options)]  # type: ignore[arg-type]
