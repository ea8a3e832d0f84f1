"""Write golden tensors from mamba-ssm's pure-PyTorch reference functions.

The references are ``ssd_minimal_discrete`` (mamba_ssm/modules/ssd_minimal.py),
``ssd_chunk_scan_combined_ref`` (mamba_ssm/ops/triton/ssd_combined.py) and
``selective_state_update_ref`` (mamba_ssm/ops/triton/selective_state_update.py).
They are imported from a mamba-ssm source tree without running its package
``__init__`` (which needs the compiled CUDA extension); ``einops``, ``triton`` and
``packaging`` must be importable.

Usage::

    python plugins/mamba/scripts/make_golden.py --mamba-src /path/to/mamba   # or MAMBA_SSM_SRC=...

Writes small seeded inputs and outputs (fp32) as safetensors into
``plugins/mamba/tests/golden/`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"


def import_references(src: Path) -> dict:
    """The three reference functions, loaded from the source tree at ``src``."""
    pkg_dir = src / "mamba_ssm"
    if not (pkg_dir / "ops" / "triton" / "ssd_combined.py").is_file():
        raise SystemExit(f"no mamba-ssm sources under {src}; pass --mamba-src pointing at a clone of state-spaces/mamba")
    # a bare package object skips mamba_ssm/__init__.py and its compiled-extension imports
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["mamba_ssm"] = pkg
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref
    from mamba_ssm.ops.triton.ssd_combined import ssd_chunk_scan_combined_ref

    return {
        "minimal": ssd_minimal_discrete,
        "combined": ssd_chunk_scan_combined_ref,
        "step": selective_state_update_ref,
    }


def _inputs(gen: torch.Generator, b: int, seqlen: int, h: int, p: int, g: int, n: int) -> dict[str, torch.Tensor]:
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {
        "x": r(b, seqlen, h, p),
        "dt": r(b, seqlen, h) - 1.0,  # raw: bias and softplus still to apply
        "A": -torch.rand(h, generator=gen) * 4 - 0.5,
        "B": r(b, seqlen, g, n),
        "C": r(b, seqlen, g, n),
        "D": r(h),
        "z": r(b, seqlen, h, p),
        "dt_bias": r(h) * 0.5,
    }


def golden_minimal(ref, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """ssd_minimal_discrete: dt already processed, one group per head, initial states."""
    b, seqlen, h, p, n, chunk = 2, 32, 3, 8, 16, 8
    t = _inputs(gen, b, seqlen, h, p, h, n)
    dt = F.softplus(t["dt"])
    init = torch.randn(b, h, p, n, generator=gen)
    y, final = ref(t["x"] * dt.unsqueeze(-1), t["A"] * dt, t["B"], t["C"], chunk, initial_states=init[:, None])
    return {"x": t["x"], "dt": dt, "A": t["A"], "B": t["B"], "C": t["C"], "initial_states": init,
            "chunk_size": torch.tensor(chunk), "y": y, "final_states": final}


def golden_combined(ref, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """ssd_chunk_scan_combined_ref: groups shared by heads, D, z gating, dt_bias + softplus."""
    b, seqlen, h, p, g, n, chunk = 2, 48, 4, 8, 2, 16, 16
    t = _inputs(gen, b, seqlen, h, p, g, n)
    y = ref(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True)
    return {**t, "chunk_size": torch.tensor(chunk), "y": y}


def golden_step(ref, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """selective_state_update_ref with per-head A, dt, D, dt_bias expanded as Mamba2 does."""
    b, h, p, g, n = 3, 4, 8, 2, 16
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    state, x, dt, z = r(b, h, p, n), r(b, h, p), r(b, h) - 1.0, r(b, h, p)
    A, D, dt_bias = -torch.rand(h, generator=gen) * 4 - 0.5, r(h), r(h) * 0.5
    B, C = r(b, g, n), r(b, g, n)
    new_state = state.clone()
    y = ref(
        new_state, x, dt[:, :, None].expand(b, h, p), A[:, None, None].expand(h, p, n), B, C,
        D=D[:, None].expand(h, p), z=z, dt_bias=dt_bias[:, None].expand(h, p), dt_softplus=True,
    )
    return {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
            "y": y, "new_state": new_state}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mamba-src", type=Path, default=os.environ.get("MAMBA_SSM_SRC"),
                        help="root of a state-spaces/mamba checkout (env MAMBA_SSM_SRC)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mamba_src is None:
        parser.error("give --mamba-src or set MAMBA_SSM_SRC to a state-spaces/mamba checkout")
    refs = import_references(args.mamba_src)
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, make in (("minimal", golden_minimal), ("combined", golden_combined), ("step", golden_step)):
            tensors = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                       for k, v in make(refs[name], gen).items()}
            path = args.out / f"ssd_{name}.safetensors"
            save_file(tensors, str(path), metadata={"source": f"mamba-ssm reference ({name})", "seed": str(args.seed)})
            print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
