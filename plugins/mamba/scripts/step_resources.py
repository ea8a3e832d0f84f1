"""What the decode state update costs a GPU before any GPU is at hand: its kernel compiled for sm_90 on the CPU.

For each state dtype and work split (``triton_step.StepTile``) the state-update kernel is
compiled by Triton for a Hopper target (no driver needed) and assembled by the ``ptxas``
Triton ships; the report gives per split the registers a thread, spilled bytes, shared
memory, the programs an SM can hold (from registers, warps and shared memory), the
barriers in the PTX, asynchronous copies (the pipelined loop over heads), the layout
conversions of whole state tiles through shared memory in the TTGIR (each one a round trip
of the tile), and the SASS instructions of a thread (straight-line code: one head a
program; each one an issue slot, the int8 update's limit) and their number per state value. These explain measurements (docs/benchmarks.md: with the conv inside, the
int8 split of 64 head dims converted its tile twice and the bf16 one held four programs an
SM; with the conv in its own launch, one barrier and five) and screen new splits or kernel
changes before a GPU call; they do not time anything.

    python plugins/mamba/scripts/step_resources.py [--splits 32x8,64x8:pc:r64] [--states bf16,int8] [--out FILE]
    python plugins/mamba/scripts/step_resources.py --kernel window --splits 32x8:dn,64x8:dn  # the chunked form
    python plugins/mamba/scripts/step_resources.py --kernel fold --splits rule,64x4  # its fold
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import avgkit_mamba  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(ROOT))

#: Hopper: 64K registers, 64 warps and 228 KiB of shared memory an SM
REGISTERS, WARPS, SHARED = 65536, 64, 228 * 1024
STATE_TYPES = {"fp32": "*fp32", "bf16": "*bf16", "int8": "*i8"}


def compile_step(state: str, tile, d_state: int = 128, d_conv: int = 4):
    """The step kernel of a bf16 model with a ``state`` state, split by ``tile``, compiled for sm_90."""
    import triton
    from avgkit_mamba.ops import triton_step

    const = dict(A_IS_LOG=True, HAS_CONV_BIAS=True, HAS_D=True, HAS_Z=True, HAS_DT_BIAS=True, QUANT=state == "int8",
                 BLOCK_P=tile.block_p, BLOCK_N=triton.next_power_of_2(d_state),
                 BLOCK_W=triton.next_power_of_2(d_conv), HEADS=tile.heads, STAGES=tile.stages,
                 LOAD_EVICT="evict_first" if tile.stream else "", STORE_CACHE=".cs" if tile.stream else "",
                 PRECONV=tile.preconv, DEFER_NORM=tile.defer_norm, USE_PDL=False, HPG=24, s_ss_n=1,
                 WORDS=tile.words and state == "int8")  # the launcher specialises unit strides to the constant 1
    floats = {"xc_ptr": "*fp32", "scale_ptr": "*fp32", "A_ptr": "*fp32", "D_ptr": "*fp32", "bias_ptr": "*fp32",
              "y_ptr": "*bf16" if tile.defer_norm else "*fp32", "ssm_ptr": STATE_TYPES[state]}
    return _compile(triton_step._step_kernel, const, floats, tile)


def compile_window(state: str, tile, d_state: int = 128, window: int = 16):
    """The chunked form's step kernel (``triton_window``) of a bf16 model with a ``state`` state, window
    ``window``, ``tile``'s head dims and warps, compiled for sm_90."""
    import triton
    from avgkit_mamba.ops import triton_window

    const = dict(K=window, HAS_D=True, QUANT=state == "int8", WORDS=state == "int8", BLOCK_P=tile.block_p,
                 BLOCK_N=triton.next_power_of_2(d_state), BLOCK_K=triton.next_power_of_2(window),
                 DEFER_NORM=tile.defer_norm, USE_PDL=False, s_ss_n=1)
    floats = {"xc_ptr": "*fp32", "scale_ptr": "*fp32", "D_ptr": "*fp32", "len_ptr": "*i64",
              "y_ptr": "*bf16" if tile.defer_norm else "*fp32", "ssm_ptr": STATE_TYPES[state]}
    return _compile(triton_window._window_step_kernel, const, floats, tile)


def compile_fold(state: str, tile, d_state: int = 128, window: int = 16):
    """The chunked form's fold (``triton_window._window_fold_kernel``, its window's last row) likewise."""
    import triton
    from avgkit_mamba.ops import triton_window

    const = dict(K=window, QUANT=state == "int8", WORDS=state == "int8", BLOCK_P=tile.block_p,
                 BLOCK_N=triton.next_power_of_2(d_state), s_ss_n=1)
    floats = {"xc_ptr": "*fp32", "scale_ptr": "*fp32", "len_ptr": "*i64", "ssm_ptr": STATE_TYPES[state]}
    return _compile(triton_window._window_fold_kernel, const, floats, tile)


def _compile(kernel, const: dict, floats: dict, tile):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in const:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = floats.get(name, "*bf16")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # sizes and strides: multiples of 16 at AiM's shapes, as the launcher's specialisation sees them
            signature[name] = "i32"
            if name in ("P", "N", "d_inner") or (name.startswith("s_") and name not in ("s_dt_h", "s_cs_w")):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    options = {"num_warps": tile.num_warps, "num_stages": 1}
    if tile.max_registers:
        options["maxnreg"] = tile.max_registers
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas() -> str:
    """Triton's bundled ptxas (the one it assembles with), else one on PATH."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(bundled) if bundled.is_file() else "ptxas"


def resources(compiled, tile, block_p: int, d_state: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp) / "step.ptx", Path(tmp) / "step.cubin"
        ptx.write_text(compiled.asm["ptx"])
        log = subprocess.run([ptxas(), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(cubin)],
                             capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([str(Path(ptxas()).with_name("cuobjdump")), "-sass", str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spilled = re.search(r"(\d+) bytes spill stores", log)
    shared = compiled.metadata.shared
    per_program = max(regs, 1) * 32 * tile.num_warps
    programs = min(REGISTERS // per_program, WARPS // tile.num_warps, SHARED // max(shared, 1))
    tile_shape = f"{block_p}x{d_state}x"
    converts = [line for line in compiled.asm["ttgir"].splitlines()
                if "ttg.convert_layout" in line and f"tensor<{tile_shape}" in line.split("->")[0]]
    code = [m.group(1) for m in re.finditer(r"^\s+/\*[0-9a-f]{4}\*/\s+(\S+)", sass, re.M)]
    instructions = len([op for op in code if op not in ("NOP;", "BRA")])  # less the padding and the final self-loop
    values = block_p * d_state / (32 * tile.num_warps)  # state values a thread updates
    return {"instructions": instructions, "instructions_per_value": round(instructions / values, 1),
            "registers": regs, "spilled_bytes": int(spilled.group(1)) if spilled else 0, "shared_bytes": shared,
            "programs_per_sm": programs, "warps_per_sm": programs * tile.num_warps,
            "barriers": compiled.asm["ptx"].count("bar.sync"), "async_copies": compiled.asm["ptx"].count("cp.async.c"),
            "tile_layout_conversions": len(converts)}


def main(argv: list[str] | None = None) -> int:
    from avgkit_mamba.ops.triton_step import StepTile, _tile
    from avgkit_mamba.ops.triton_window import fold_tile, window_tile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", default="rule,32x8,64x8,32x8:h4:s2,16x8:pc,32x8:pc,64x8:pc,64x8:pc:r64,32x8:pc:r40,"
                                        "64x8:pc:dn:r64,32x8:pc:dn:r40",
                    help="comma-separated splits (BLOCK_PxWARPS[:stream][:hN][:sN][:pc][:rN][:dn]); rule: the fixed rule's "
                         "split at AiM-B's batch 64 (128 sequences x 24 heads)")
    ap.add_argument("--states", default="bf16,int8", help="comma-separated state dtypes (fp32, bf16, int8)")
    ap.add_argument("--kernel", choices=("step", "window", "fold"), default="step",
                    help="the recurrent state update (step), the chunked form's step (window: head dims, warps, "
                         "rN and dn of each split apply) or its fold at a window's last row (fold)")
    ap.add_argument("--window", type=int, default=16, help="the chunked form's window (--kernel window)")
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--d-state", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: print only)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("step_resources compiles kernels: unset TRITON_INTERPRET (the interpreter replaces them)",
              file=sys.stderr)
        return 2
    if args.kernel == "window":
        compiled = lambda state, tile: compile_window(state, tile, args.d_state, args.window)  # noqa: E731
    elif args.kernel == "fold":
        compiled = lambda state, tile: compile_fold(state, tile, args.d_state, args.window)  # noqa: E731
    else:
        compiled = lambda state, tile: compile_step(state, tile, args.d_state)  # noqa: E731
    rows = []
    for state in args.states.split(","):
        quant = state == "int8"
        if args.kernel == "window":
            rule = window_tile(128 * 24, args.headdim, quant, interpret=False)
        elif args.kernel == "fold":
            rule = fold_tile(args.headdim, interpret=False)
        else:
            rule = _tile(128 * 24, args.headdim, quant)
        for spec in args.splits.split(","):
            tile = rule if spec == "rule" else StepTile.parse(spec)
            block_p = min(tile.block_p, args.headdim)
            row = {"state": state, "split": spec, **tile._asdict(), "rule": tile == rule,
                   **resources(compiled(state, tile), tile, block_p, args.d_state)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import triton

    report = {"target": "sm_90a", "triton": triton.__version__, "kernel": args.kernel, "headdim": args.headdim,
              "d_state": args.d_state, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
