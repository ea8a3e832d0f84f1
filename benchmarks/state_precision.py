"""Accuracy gate of the AiM decoding state's precision (fp32, bf16, int8) and layout (recurrent, chunked).

Two measurements decide whether a state dtype may be the recipe default
(docs/backbone-mamba.md, "Decoding state"):

1. **Decode path against teacher forcing.** AiM-B with random weights (adaLN drawn
   non-zero, as the sampling benchmark builds it) in fp32, PyTorch ops: logits of the
   prefill and of every step fed the given tokens, against the fp32 forward over the same
   tokens (teacher forcing). Per state dtype and horizon (the first 256 positions, and all
   1024): KL(teacher || decode) per position (mean over the batch), its mean and max over
   positions, the max absolute logit error (and relative to max |logit|), top-1 agreement.
   Only the state's dtype and layout differ between rows: a row is named by its dtype,
   with ``/chunked`` for the chunked form (the state written once per 16-token window).
2. **Digits.** With ``--digits-run DIR`` (a trained digits run), 100 samples per class
   with each state dtype, same seeds, classified by the independent digit classifier
   (``avgkit.eval.digits.DigitClassifier``): accuracy, its binomial standard error, and
   the fraction of samples whose tokens equal the fp32 state's.

The gate (fixed before measuring): at 1024 steps mean KL <= 1e-4 nats, max KL <= 1e-3
nats, top-1 agreement >= 99%; and the digits accuracy within two standard errors of the
difference (sqrt(2) x the binomial SE) of the fp32 state's.

    python benchmarks/state_precision.py --digits-run runs/digits [--out FILE]
    python benchmarks/state_precision.py --reuse-decode EARLIER.json --digits-run runs/digits   # digits only
    python benchmarks/state_precision.py --smoke      # tiny model, 16 tokens (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, build_sampling_aim, smoke_out, write_result  # noqa: E402

#: rows by default: each state dtype in the recurrent form, and the low-precision ones in the chunked form
LAYOUTS = ("fp32", "bf16", "int8", "bf16/chunked", "int8/chunked")
GATE = {"kl_mean_max": 1e-4, "kl_max_max": 1e-3, "top1_agree_min": 0.99, "digits_se_factor": 2.0}


def set_layout(backbone: Any, layout: str, window: int = 16) -> None:
    """``dtype`` or ``dtype/form``: the decoding state's dtype and form (recurrent when not named; the
    chunked form's window of ``window`` tokens)."""
    state_dtype, _, form = layout.partition("/")
    backbone.config = backbone.config.model_copy(update={"state_dtype": state_dtype, "decode_chunk": window,
                                                         "decode_form": form or "recurrent"})


def decode_logits(backbone: Any, cond: Any, codes: torch.Tensor) -> torch.Tensor:
    """(B, N, V) fp32 logits of prefill + N-1 steps fed ``codes``."""
    state = backbone.init_state(codes.shape[0])
    out = [backbone.prefill(state, cond).float()]
    for k in range(codes.shape[1] - 1):
        out.append(backbone.step(state, codes[:, k], cond).float())
    return torch.stack(out, 1)


def compare(teacher: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    """KL(teacher || decoded) per position (mean over the batch): mean and max; logit errors; top-1 agreement."""
    logp, logq = F.log_softmax(teacher.double(), -1), F.log_softmax(decoded.double(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean(0)  # (N,)
    err = (decoded - teacher).abs()
    return {
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "max_logit_err": err.max().item(),
        "max_logit_err_rel": (err.max() / teacher.abs().max()).item(),
        "top1_agree": (decoded.argmax(-1) == teacher.argmax(-1)).float().mean().item(),
    }


def decode_path(preset: str, steps: int, batch: int, vocab: int, classes: int, horizons: list[int],
                layouts: tuple[str, ...] = LAYOUTS, window: int = 16) -> dict:
    backbone, cond_mod = build_sampling_aim(preset, device="cpu", vocab=vocab, tokens=steps, classes=classes,
                                            state_dtype="fp32", impl="torch")
    backbone, cond_mod = backbone.float(), cond_mod.float()
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab, (batch, steps), generator=gen)
    labels = torch.arange(batch) * 37 % classes
    rows: dict[str, Any] = {}
    with torch.no_grad():
        cond = cond_mod(labels)
        t0 = time.perf_counter()
        teacher = backbone(codes, cond).float()
        print(f"teacher forcing {steps} tokens: {time.perf_counter() - t0:.1f} s", flush=True)
        for sd in layouts:
            set_layout(backbone, sd, window)
            t0 = time.perf_counter()
            decoded = decode_logits(backbone, cond, codes)
            rows[sd] = {str(h): compare(teacher[:, :h], decoded[:, :h]) for h in horizons}
            print(f"{sd}: {steps} steps in {time.perf_counter() - t0:.1f} s; "
                  + "; ".join(f"{h}: {rows[sd][str(h)]}" for h in horizons), flush=True)
    return {"preset": preset, "steps": steps, "batch": batch, "vocab": vocab, "weights": "random, fp32", "window": window,
            "tokens": "uniform random codes (seed 0)", "horizons": horizons, "rows": rows,
            "logit_std": teacher.std().item()}


def digits(run: str, per_class: int, batch_size: int, layouts: tuple[str, ...] = LAYOUTS) -> dict:
    from avgkit.api import load
    from avgkit.eval.digits import DigitClassifier

    g = load(run, device="cpu")
    clf = DigitClassifier()
    labels = g.labels(list(range(g.num_classes)), per_class)
    out: dict[str, Any] = {"run": str(run), "samples": len(labels), "rows": {}}
    codes_fp32 = None
    for sd in layouts:
        set_layout(g.backbone, sd)
        t0 = time.perf_counter()
        with torch.no_grad():
            codes = g.sample_codes(list(range(g.num_classes)), n_per_class=per_class, seed=0, batch_size=batch_size)
            images = g.decode(codes)
        acc = clf.accuracy(images, labels)
        n = len(labels)
        row = {"accuracy": acc, "binomial_se": math.sqrt(acc * (1 - acc) / n),
               "seconds": round(time.perf_counter() - t0, 1)}
        if codes_fp32 is None:
            codes_fp32 = codes
        else:
            row["same_codes_as_fp32"] = (codes == codes_fp32).all(1).float().mean().item()
            row["same_tokens_as_fp32"] = (codes == codes_fp32).float().mean().item()
        out["rows"][sd] = row
        print(f"digits {sd}: {row}", flush=True)
    set_layout(g.backbone, "fp32")
    return out


def apply_gate(result: dict) -> dict[str, dict]:
    """Per state dtype: whether each gate criterion holds (None where not measured)."""
    verdict = {}
    dec = result["decode_path"]
    last = str(dec["horizons"][-1])
    dig = result.get("digits")
    for sd in dec["rows"]:
        r = dec["rows"][sd][last]
        v: dict[str, Any] = {
            "kl_mean": r["kl_mean"] <= GATE["kl_mean_max"],
            "kl_max": r["kl_max"] <= GATE["kl_max_max"],
            "top1_agree": r["top1_agree"] >= GATE["top1_agree_min"],
            "digits": None,
        }
        if dig is not None:
            a, ref = dig["rows"][sd], dig["rows"]["fp32"]
            v["digits"] = abs(a["accuracy"] - ref["accuracy"]) <= GATE["digits_se_factor"] * math.sqrt(2) * max(
                ref["binomial_se"], 1.0 / dig["samples"])
        v["passes"] = all(x for x in v.values() if x is not None) and (dig is not None or result["smoke"])
        verdict[sd] = v
    return verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="aim-b")
    ap.add_argument("--steps", type=int, default=1024, help="decoded tokens (horizons: 256 and this)")
    ap.add_argument("--batch", type=int, default=2, help="sequences decoded (CPU: keep it small)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="rows: a state dtype, /chunked for the chunked "
                    "form; the first must be fp32 (the digits reference)")
    ap.add_argument("--digits-run", default=None, help="a trained digits run directory (avgkit train digits)")
    ap.add_argument("--digits-per-class", type=int, default=100)
    ap.add_argument("--digits-batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--reuse-decode", default=None,
                    help="take the decode-path part from an earlier result JSON of this script (run the digits only)")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        preset, steps, batch, vocab, classes, horizons = "tiny", 16, 2, 64, 10, [8, 16]
    else:
        preset, steps, batch, vocab, classes = args.preset, args.steps, args.batch, 16384, 1000
        horizons = sorted({min(256, steps), steps})
    layouts = tuple(args.layouts.split(","))
    if layouts[0] != "fp32":
        print(f"--layouts {args.layouts}: the first must be fp32, the reference the others are gated against",
              file=sys.stderr)
        return 2
    if args.digits_run is not None and not Path(args.digits_run).is_dir():
        print(f"--digits-run {args.digits_run} is not a directory; train one with `avgkit train digits`",
              file=sys.stderr)
        return 2
    if args.reuse_decode:
        import json

        earlier = json.loads(Path(args.reuse_decode).read_text())
        dec = {**earlier["decode_path"], "from": str(args.reuse_decode),
               "environment": earlier.get("environment"), "torch_threads": earlier.get("torch_threads")}
    else:
        dec = decode_path(preset, steps, batch, vocab, classes, horizons, layouts, 4 if args.smoke else 16)
    result: dict[str, Any] = {"smoke": args.smoke, "gate": GATE, "torch_threads": torch.get_num_threads(),
                              "decode_path": dec}
    if args.digits_run is not None:
        result["digits"] = digits(args.digits_run, args.digits_per_class, args.digits_batch, layouts)
    result["verdict"] = apply_gate(result)
    for sd, v in result["verdict"].items():
        print(f"gate {sd}: {v}")
    write_result("state_precision_smoke" if args.smoke else "state_precision_cpu", result,
                 smoke_out("state_precision", args.out, args.smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
