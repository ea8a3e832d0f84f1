"""The decoding step's Triton attention under the CPU interpreter, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

TESTS = Path(__file__).resolve().parent


def test_decode_attention_kernel_under_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(TESTS / "decode_kernel_checks.py")], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_attention_kernel_on_the_gpu_matches_math_at_gpt_b_shapes() -> None:
    """GPT-B's step (12 heads of 64, a 257-key cache, 128 rows) in bf16: the kernel against matmul-softmax-matmul
    in fp32, at positions on both sides of a 64-key block, and the same bits on a repeated call."""
    from avgkit_transformer.decode_kernel import decode_attention
    from avgkit_transformer.layers import _math_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(128, 12, 1, 64, generator=g, device="cuda").bfloat16()
    k, v = (torch.randn(128, 12, 257, 64, generator=g, device="cuda").bfloat16() for _ in range(2))
    keys = torch.arange(257, device="cuda")
    for pos in (0, 63, 64, 200, 256):
        positions = torch.tensor([pos], device="cuda")
        mask = keys[None, :] <= positions[:, None]
        got = decode_attention(q, k, v, mask, positions)
        want = _math_attention(q.float(), k.float(), v.float(), mask)
        assert (got.float() - want).abs().max().item() < 2e-2, pos
        assert torch.equal(decode_attention(q, k, v, mask, positions), got), pos
