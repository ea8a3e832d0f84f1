"""Decoding-state memory per image as the sequence grows: recurrent (AiM) vs KV cache (GPT).

Exact bytes of the state each backbone allocates (``init_state``, on the meta device, so
this runs anywhere in seconds), per image with CFG (two sequences), bf16, and the bytes a
decoding step must move on average over a whole image: the Mamba state is read and
written every step; a KV cache is read up to the current position and written one slot.

For AiM it also sizes the dual (quadratic) form of the SSD as a decoding layout: keep
each past token's x, B (bf16), dt and cumulative dt*A (fp32) and compute
``y_t = sum_s (C_t . B_s) exp(cum_t - cum_s) dt_s x_s`` from them. A step at position t
then reads t+1 cached tokens instead of reading and writing the whole state, so it moves
fewer bytes up to a crossover position and more after it; the best layout switches there
(dual, then materialise the state and continue recurrently).

    python benchmarks/state_memory.py [--out FILE]
    python benchmarks/state_memory.py --smoke --out FILE   # tiny presets, two lengths
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, smoke_out, write_result  # noqa: E402

from avgkit.plugins import get_registry  # noqa: E402

TOKENS = (256, 576, 1024)
MODELS = [("aim-b", "mamba2", "aim-b"), ("aim-l", "mamba2", "aim-l"), ("aim-xl", "mamba2", "aim-xl"),
          ("gpt-b", "transformer", "gpt-b"), ("gpt-l", "transformer", "gpt-l")]
VOCAB = 16384
SMOKE_TOKENS = (16, 64)
SMOKE_MODELS = [("aim-tiny", "mamba2", "tiny"), ("gpt-tiny", "transformer", "tiny")]


def state_bytes(name: str, preset: str, tokens: int, vocab: int = VOCAB) -> tuple[int, float]:
    """(state bytes per image with CFG, average bytes moved per decoding step per image)."""
    spec = get_registry().get("backbone", name)
    opts = {"vocab_size": vocab, "num_tokens": tokens}
    if name == "mamba2":
        opts["state_dtype"] = "bf16"
    with torch.device("meta"):
        bb = spec.factory(spec.resolve(preset, opts)).to(torch.bfloat16)
        state = bb.init_state(2, device="meta", dtype=torch.bfloat16)
    tensors = [t for t in vars(state).values() if isinstance(t, torch.Tensor)]
    for layer in getattr(state, "layers", []):
        tensors += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    total = sum(t.numel() * t.element_size() for t in tensors)
    if name == "mamba2":
        moved = 2.0 * total  # every step reads and writes the whole state
    else:
        moved = total / 2 + total / (tokens + 1)  # on average half the cache is read, one slot written
    return total, moved


def dual_form(preset: str, tokens: int, vocab: int = VOCAB) -> dict[str, float]:
    """Per-image (CFG: 2 sequences) bytes of the dual layout for an AiM preset, bf16 x/B, fp32 dt/cum."""
    spec = get_registry().get("backbone", "mamba2")
    c = spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens})
    d_inner = c.expand * c.d_model
    heads = d_inner // c.headdim
    per_token = (d_inner * 2 + c.ngroups * c.d_state * 2 + heads * 8) * c.n_layer * 2  # all layers, 2 sequences
    conv = (d_inner + 2 * c.ngroups * c.d_state) * c.d_conv * 2 * c.n_layer * 2
    recurrent_step = 2 * (heads * c.headdim * c.d_state * 2 * c.n_layer * 2 + conv)
    crossover = (recurrent_step - 2 * conv) / per_token  # the conv window moves the same in both layouts
    dual_steps = [(t + 1) * per_token + 2 * conv for t in range(tokens)]
    hybrid_steps = [min(d, recurrent_step) for d in dual_steps]
    return {"dual_cache_MiB_per_image_at_end": round((tokens * per_token + conv) / 2**20, 2),
            "dual_step_traffic_MiB_per_image": round(sum(dual_steps) / tokens / 2**20, 2),
            "hybrid_step_traffic_MiB_per_image": round(sum(hybrid_steps) / tokens / 2**20, 2),
            "dual_crossover_token": int(crossover)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args()
    models, lengths, vocab = (SMOKE_MODELS, SMOKE_TOKENS, 64) if args.smoke else (MODELS, TOKENS, VOCAB)
    rows = []
    for label, name, preset in models:
        if name not in get_registry().names("backbone"):
            continue
        for tokens in lengths:
            total, moved = state_bytes(name, preset, tokens, vocab)
            row = {"model": label, "tokens": tokens, "state_MiB_per_image": round(total / 2**20, 2),
                   "step_traffic_MiB_per_image": round(moved / 2**20, 2)}
            if name == "mamba2":
                row.update(dual_form(preset, tokens, vocab))
            rows.append(row)
            print(row)
    write_result("state_memory", {"dtype": "bf16", "cfg": True, "rows": rows},
                 smoke_out("state_memory", args.out, args.smoke))


if __name__ == "__main__":
    main()
