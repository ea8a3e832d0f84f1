"""The Triton draw (``avgkit.sample.draw_triton``) on the CPU interpreter against the PyTorch draw.

Run as ``python draw_interpret_checks.py``: it sets ``TRITON_INTERPRET=1`` before Triton is
imported (which is why the test runs it in a subprocess), prints one line per case and exits
non-zero on the first mismatch. Every pick must be the inverse of the float64 CDF of the
PyTorch path's probabilities at its uniform (to 1e-6 of the total: the two paths round in
their own orders), never a token of zero probability, and almost every pick that of the
PyTorch path.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from avgkit.sample.draw_triton import draw_tokens_triton  # noqa: E402
from avgkit.sample.filtering import draw_tokens_torch, guidance_scale  # noqa: E402


def fail(msg: str) -> None:
    raise SystemExit(f"FAILED: {msg}")


def reference_probs(logits: torch.Tensor, k: torch.Tensor, n_tok: int, cfg: float, linear: bool,
                    temperature: float) -> torch.Tensor:
    logits = logits.float()
    if cfg != 1.0:
        cond, uncond = logits.chunk(2)
        logits = uncond + guidance_scale(k, n_tok, cfg, linear) * (cond - uncond)
    return torch.softmax(logits / temperature, -1).double()


def rule(probs: torch.Tensor, cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The inverse-CDF rule: the first token whose running sum passes ``target``, the last where none does, the
    most likely (the first of equals) where that one has zero probability."""
    pick = torch.searchsorted(cdf, target[:, None], right=True).clamp(max=probs.shape[1] - 1)
    return torch.where(probs.gather(1, pick) > 0, pick, probs.argmax(-1, keepdim=True))[:, 0]


def check(label: str, logits: torch.Tensor, u: torch.Tensor, k: int, cfg: float, linear: bool, temperature: float,
          min_agree: float = 0.9) -> None:
    batch, n_tok = u.shape
    kt = torch.tensor([k])
    want = torch.full((batch, n_tok), -7, dtype=torch.long)
    got = want.clone()
    draw_tokens_torch(logits, u, kt, want, cfg_scale=cfg, linear=linear, temperature=temperature)
    draw_tokens_triton(logits, u, kt, got, cfg_scale=cfg, linear=linear, num_tokens=n_tok, temperature=temperature)
    others = torch.ones(n_tok, dtype=torch.bool)
    others[k] = False
    if not (got[:, others] == -7).all():
        fail(f"{label}: columns other than {k} were written")
    probs = reference_probs(logits, kt, n_tok, cfg, linear, temperature)
    cdf = probs.cumsum(-1)
    target = u[:, k] * cdf[:, -1]
    slack = 1e-6 * cdf[:, -1]
    pick = got[:, k]
    lo, hi = rule(probs, cdf, target - slack), rule(probs, cdf, target + slack)
    p_pick = probs.gather(1, pick[:, None])[:, 0]
    valid = (p_pick > 0) & (((pick >= lo) & (pick <= hi)) | (pick == rule(probs, cdf, target)))
    agree = (pick == want[:, k]).double().mean().item()
    print(f"{label:<52} {batch} images, agree {agree:.3f}", flush=True)
    if not valid.all():
        fail(f"{label}: picks {pick[~valid].tolist()} are not the inverse CDF at their uniforms")
    if agree < min_agree:
        fail(f"{label}: only {agree:.3f} of the picks are the PyTorch path's")


def main() -> None:
    g = torch.Generator().manual_seed(0)
    for vocab in (300, 5000):  # one block, and two with a carry between them
        for cfg, linear in ((1.0, False), (2.0, False), (3.0, True)):
            for temperature in (1.0, 0.7):
                for dtype in (torch.float32, torch.float16):
                    batch = 24
                    rows = batch * (2 if cfg != 1.0 else 1)
                    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
                    u = torch.rand(batch, 10, generator=g, dtype=torch.float64)
                    check(f"V{vocab} cfg {cfg}{' linear' if linear else ''} T{temperature} {str(dtype)[6:]}",
                          logits, u, 7, cfg, linear, temperature)
    # a linear schedule over one token keeps the constant scale (as the sampler's guidance does)
    logits = torch.randn(8, 300, generator=g) * 3
    check("one token, linear schedule", logits, torch.rand(4, 1, generator=g, dtype=torch.float64), 0, 3.0, True, 1.0,
          min_agree=1.0)
    # edges: uniforms at both ends (1 itself: past every token, so the last token, of zero probability, gives way to
    # the most likely one, the first of two equal ones in row 0), a tail of zero-probability tokens
    vocab, batch = 5000, 6
    logits = torch.randn(batch, vocab, generator=g)
    logits[:, -700:] = float("-inf")  # zero probability: never picked
    logits[:2, 10] = logits[:2, 20] = 50.0  # two equal most likely tokens
    u = torch.tensor([[1.0], [2.0 ** -53], [0.5], [1.0 - 2.0 ** -53], [1.0], [0.999999]],
                     dtype=torch.float64)
    check("edges: u at 0 and 1, a zero tail, tied maxima", logits, u, 0, 1.0, False, 1.0, min_agree=1.0)
    got = torch.zeros(batch, 1, dtype=torch.long)
    draw_tokens_triton(logits, u, torch.tensor([0]), got, cfg_scale=1.0, linear=False, num_tokens=1,
                       temperature=1.0)
    if (got >= vocab - 700).any():
        fail(f"a zero-probability token was picked: {got[:, 0].tolist()}")
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
