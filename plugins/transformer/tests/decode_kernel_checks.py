"""The decoding step's Triton attention on the CPU interpreter (run in a subprocess: ``TRITON_INTERPRET=1``
must be set before Triton is imported). Prints one line per check; exits non-zero on the first failure."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from avgkit_transformer import PRESETS, TransformerBackbone, TransformerConfig  # noqa: E402
from avgkit_transformer.decode_kernel import decode_attention  # noqa: E402
from avgkit_transformer.layers import _math_attention  # noqa: E402

from avgkit.interfaces import Conditioning  # noqa: E402


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{name:<58} {'ok' if ok else 'FAILED'} {detail}", flush=True)
    if not ok:
        raise SystemExit(f"FAILED: {name} {detail}")


def kernel_checks() -> None:
    g = torch.Generator().manual_seed(0)
    b, heads, kv, length, dim = 3, 4, 2, 150, 24  # grouped query heads, a head dim that is not a power of two
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        q = torch.randn(b, 1, heads, dim, generator=g).to(dtype).transpose(1, 2)  # the model's strided q
        k = torch.randn(b, kv, length, dim, generator=g).to(dtype)
        v = torch.randn(b, kv, length, dim, generator=g).to(dtype)
        keys = torch.arange(length)
        valid = torch.rand(b, length, generator=g) > 0.3  # a padded prefix: some keys left out
        valid[0, :64] = False  # row 0: a whole block of keys left out
        for pos in (0, 63, 64, 130):
            positions = torch.tensor([pos])
            causal = keys[None, :] <= positions[:, None]  # (1, L), as an unpadded step builds it
            padded = (causal & (valid | (keys == pos)))[:, None, None, :]  # (B, 1, 1, L), as a padded step builds it
            for name, mask in (("causal", causal), ("padded", padded)):
                k_seen = k.clone()
                k_seen[:, :, pos + 1 :] = float("nan")  # never read: past this step's position
                got = decode_attention(q, k_seen, v, mask, positions)
                want = _math_attention(q.float(), k.float(), v.float(), mask)
                err = (got.float() - want).abs().max().item()
                check(f"{str(dtype)[6:]} pos {pos} {name}", got.dtype == dtype and err <= tol, f"max err {err:.1e}")
    # each row's result is the same bits alone and in a batch
    q, k, v = (torch.randn(4, 2, n, 16, generator=g) for n in (1, 70, 70))
    mask, positions = torch.ones(1, 70, dtype=torch.bool), torch.tensor([66])
    whole = decode_attention(q, k, v, mask, positions)
    alone = torch.cat([decode_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], mask, positions) for i in range(4)])
    check("rows alone and batched agree bit for bit", torch.equal(whole, alone))
    traced = torch.compile(decode_attention, backend="aot_eager", fullgraph=True)  # an opaque op: no graph break
    check("traced whole by torch.compile, same bits", torch.equal(traced(q, k, v, mask, positions), whole))


@torch.no_grad()
def model_checks() -> None:
    torch.manual_seed(0)
    logits = {}
    for kind in ("math", "triton"):
        torch.manual_seed(0)
        model = TransformerBackbone(TransformerConfig(**PRESETS["tiny"], kv_heads=2, max_prefix_len=2,
                                                      decode_attention=kind, vocab_size=16, num_tokens=16)).eval()
        prefix = torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(1))
        cond = Conditioning(prefix=prefix, prefix_mask=torch.tensor([[True, True], [False, True], [True, True]]))
        codes = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(2))
        state = model.init_state(3)
        out = [model.prefill(state, cond)] + [model.step(state, codes[:, i], cond) for i in range(15)]
        logits[kind] = torch.stack(out, 1)
        if kind == "triton":
            check("decoded logits match a training pass", torch.allclose(logits[kind], model(codes, cond), atol=1e-4))
    err = (logits["triton"] - logits["math"]).abs().max().item()
    check("a padded-prefix decode: triton step as math step", err <= 1e-4, f"max err {err:.1e}")
    # compiled, the cache write is functionalized: the kernel must still read this step's key and value
    state = model.init_state(3)
    out = [model.prefill(state, cond)]
    step = torch.compile(model.step, backend="aot_eager", fullgraph=True)
    out += [step(state, codes[:, i], cond) for i in range(15)]
    err = (torch.stack(out, 1) - logits["triton"]).abs().max().item()
    check("compiled triton step as eager triton step", err <= 1e-6, f"max err {err:.1e}")


if __name__ == "__main__":
    kernel_checks()
    model_checks()
    print("OK")
