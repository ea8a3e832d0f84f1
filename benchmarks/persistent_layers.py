"""A decoding step's launches against one persistent kernel with grid-wide barriers, and weights read from L2.

At batch 16 and 64 AiM-B's decode step is about 140 kernels, most of which take 3-7 us whatever
they move (``decode_linear.py``: a projection takes the same 5 us at 32 rows as at 128). Is that
the launches, or each kernel's own latency? One kernel that stays resident and runs the layers'
phases one after another, every program waiting at a grid-wide barrier between phases, would
remove the launches but not the latency. This script measures both on the step's own shapes
(AiM-B's ``in_proj`` 768 -> 3352 and ``out_proj`` 1536 -> 768 with the residual added, 24
layers' distinct weights, more than L2 holds), each replayed from a CUDA graph:

* ``launches cublas``: ``mm`` then ``addmm`` a layer (48 launches; what the step runs today);
  ``+ state``: with a launch between them that streams the layer's one-byte state (AiM-B's
  24 x 64 x 128 bytes a row) past L2, as the state update does;
  ``next layer's weights prefetched into L2``: a side stream reads the next layer's weights
  into L2 (marked to stay) while this layer runs, so the products might read L2, not DRAM;
  ``one layer's weights (L2-resident)``: every layer multiplies layer 0's weights, the bound
  on what prefetching could give;
* ``launches triton BNin x BNout``: the same two products as Triton tile kernels (48 launches);
* ``persistent BNin x BNout``: one launch of one (or, ``--programs-per-sm``, more) program an
  SM looping over the 48 phases, each phase's tiles striped over the programs, a grid barrier
  after each phase; ``+ state``: the layer's state streamed as a third phase;
* ``persistent barriers only``: the same launch with no work (48 barriers);
* ``launches empty``: 48 launches of a kernel that does nothing.

Per row: microseconds a layer and the final activations' largest difference from an fp32
chain of the same products (relative to its largest value). A barrier that let a phase read
what the previous one had not finished writing would show there.

    python benchmarks/persistent_layers.py --out persistent_layers.json [--rows 32,128] [--configs 32x16x128x4x4]
    python benchmarks/persistent_layers.py --smoke --out FILE   # tiny shapes on the CPU, Triton interpreted

Under the interpreter programs run one after another, so a barrier would wait forever: the smoke
run launches the persistent kernel once per phase (``SYNC`` off), through the same phase code.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--smoke" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, device_for, graph_ms, rel_diff, smoke_out, write_result  # noqa: E402
from decode_linear import _product  # noqa: E402

#: (d_model, in_proj's outputs, out_proj's inputs): AiM-B, and tiny shapes for the smoke run
SHAPE = (768, 3352, 1536)
SMOKE_SHAPE = (32, 40, 24)
LAYERS = 24
SMOKE_LAYERS = 3
#: BNin x BNout x BLOCK_K x STAGES x WARPS (BLOCK_M: the rows rounded up to a power of two, 16 to 128)
CONFIGS = "32x16x128x4x4,64x32x128x3x4,16x16x128x4x4,32x16x64x5x4,16x16x128x4x8"
SMOKE_CONFIGS = "16x16x16x2x4"
#: a barrier gives up after this many polls and flags the run (a bug must not hang the machine)
SPIN_LIMIT = 1 << 20
#: AiM-B's one-byte state a sequence and layer (24 heads x 64 x 128), and the smoke run's
STATE_BYTES = {False: 24 * 64 * 128, True: 64}
#: bytes a program streams a block: one launch a block, or a persistent program's loop over blocks
STREAM_BLOCK = 4096
#: weights a program of the L2 prefetch reads
PREFETCH_BLOCK = 8192


@triton.jit
def _tile(x_ptr, w_ptr, y_ptr, t, M, N, K, s_xm, s_wn, s_ym, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_K: tl.constexpr, STAGES: tl.constexpr, RESIDUAL: tl.constexpr):
    """Tile ``t`` (row blocks outer) of y = x @ w.T, or y += x @ w.T with ``RESIDUAL``; fp32 accumulation."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    offs_m = (t // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (t % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _product(x_ptr, w_ptr, offs_m, offs_n, M, N, K, s_xm, s_wn, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    ptrs = y_ptr + offs_m[:, None] * s_ym + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if RESIDUAL:
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_kernel(x_ptr, w_ptr, y_ptr, M, N: tl.constexpr, K: tl.constexpr, s_xm: tl.constexpr, s_wn: tl.constexpr,
                 s_ym: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 STAGES: tl.constexpr, RESIDUAL: tl.constexpr):
    _tile(x_ptr, w_ptr, y_ptr, tl.program_id(0), M, N, K, s_xm, s_wn, s_ym, BLOCK_M, BLOCK_N, BLOCK_K, STAGES,
          RESIDUAL)


@triton.jit
def _grid_barrier(counter_ptr, flag_ptr, target, SPINS: tl.constexpr):
    """Every program waits until ``target`` arrivals are counted. The CTA barrier orders this program's stores
    before its release; the acquire on the poll orders the next phase's loads after everyone's stores (the
    pattern of a cooperative grid sync). Scalar atomics run on one thread of the program. A barrier that waited
    ``SPINS`` polls sets ``flag``, and later barriers then do not wait at all."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    spins = tl.atomic_add(flag_ptr, 0, sem="relaxed", scope="gpu") * SPINS
    while (seen < target) & (spins < SPINS):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen < target:
        tl.atomic_max(flag_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _stream(s_ptr, n, start, step, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Blocks ``start, start + step, ...`` of a layer's one-byte state read and written back (+1): the state
    update's bytes without its arithmetic."""
    for b in tl.range(start, tl.cdiv(n, BLOCK), step, num_stages=STAGES):
        offs = b * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(s_ptr + offs, mask=offs < n, eviction_policy="evict_first")  # past L2, as the update does
        tl.store(s_ptr + offs, v + 1, mask=offs < n, eviction_policy="evict_first")


@triton.jit
def _stream_kernel(s_ptr, n, BLOCK: tl.constexpr):
    _stream(s_ptr, n, tl.program_id(0), tl.num_programs(0), BLOCK, 1)


@triton.jit
def _prefetch_kernel(w_ptr, n, sink_ptr, BLOCK: tl.constexpr):
    """Reads a block of weights into L2 marked to stay there (``evict_last``); the store that never happens keeps
    the loads."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = tl.sum(tl.load(w_ptr + offs, mask=offs < n, other=0.0, eviction_policy="evict_last").to(tl.float32),
                   axis=0)
    tl.store(sink_ptr + tl.program_id(0), total, mask=total == 1.2345e38)


@triton.jit
def _persistent_kernel(x_ptr, u_ptr, win_ptr, wout_ptr, s_ptr, counter_ptr, flag_ptr, first, last, M, S,
                       D: tl.constexpr, E: tl.constexpr, DI: tl.constexpr, BLOCK_M: tl.constexpr, BN_IN: tl.constexpr,
                       BN_OUT: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, WORK: tl.constexpr,
                       STATE: tl.constexpr, S_BLOCK: tl.constexpr, SYNC: tl.constexpr, SPINS: tl.constexpr):
    """Phases ``first..last`` of the layers' chain: u = x @ w_in[l].T, then (``STATE``) layer l's state of ``S``
    bytes streamed, then x += u[:, :DI] @ w_out[l].T; each phase's tiles striped over the programs, a grid
    barrier after each. The model's widths are constants of the kernel: the compiler must know that the rows of
    u (3352 wide) are 16-byte aligned to copy them asynchronously."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.cdiv(M, BLOCK_M)
    per_layer: tl.constexpr = 3 if STATE else 2
    for phase in range(first, last + 1):
        layer = phase // per_layer
        part = phase % per_layer
        if WORK:
            if part == 0:
                for t in range(pid, rows * tl.cdiv(E, BN_IN), nprog):
                    _tile(x_ptr, win_ptr + layer * (E * D), u_ptr, t, M, E, D, D, D, E, BLOCK_M, BN_IN, BLOCK_K,
                          STAGES, False)
            elif part == per_layer - 1:
                for t in range(pid, rows * tl.cdiv(D, BN_OUT), nprog):
                    _tile(u_ptr, wout_ptr + layer * (D * DI), x_ptr, t, M, D, DI, E, DI, D, BLOCK_M, BN_OUT, BLOCK_K,
                          STAGES, True)
            else:
                _stream(s_ptr + layer.to(tl.int64) * S, S, pid, nprog, S_BLOCK, STAGES)
        if SYNC:
            _grid_barrier(counter_ptr, flag_ptr, (phase - first + 1) * nprog, SPINS)


@triton.jit
def _empty_kernel(x_ptr):
    pass


def _block_m(rows: int) -> int:
    return min(128, max(16, triton.next_power_of_2(rows)))


class Chain:
    """24 layers' weights and the activations they carry; every candidate runs the same chain from ``x0``."""

    def __init__(self, rows: int, shape: tuple[int, int, int], layers: int, state_bytes: int, device: torch.device,
                 dtype: torch.dtype):
        d, e, di = shape
        g = torch.Generator(device=device).manual_seed(0)
        self.shape, self.layers = shape, layers
        self.x0 = torch.randn(rows, d, generator=g, device=device).to(dtype)
        self.w_in = (torch.randn(layers, e, d, generator=g, device=device) / d ** 0.5).to(dtype)
        self.w_out = (torch.randn(layers, d, di, generator=g, device=device) * 0.5 / di ** 0.5).to(dtype)
        self.x = self.x0.clone()
        self.u = torch.empty(rows, e, device=device, dtype=dtype)
        self.s_bytes = rows * state_bytes
        assert layers * self.s_bytes < 2**31, "the state's offsets are 32-bit"
        self.s0 = torch.randint(-128, 127, (layers, self.s_bytes), generator=g, device=device, dtype=torch.int8)
        self.state = self.s0.clone()
        self.counter = torch.zeros(1, device=device, dtype=torch.int32)
        self.flag = torch.zeros(1, device=device, dtype=torch.int32)
        self.sink = torch.zeros(triton.cdiv(e * d, PREFETCH_BLOCK), device=device)
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.want = self._reference(self.w_in, self.w_out)
        self.want_resident = self._reference(self.w_in[:1].expand_as(self.w_in), self.w_out[:1].expand_as(self.w_out))

    def _reference(self, w_ins: torch.Tensor, w_outs: torch.Tensor) -> torch.Tensor:
        x = self.x0.float()
        for w_in, w_out in zip(w_ins.float(), w_outs.float(), strict=True):
            x = x + (x @ w_in.t())[:, : self.shape[2]] @ w_out.t()
        return x

    def reset(self) -> None:
        self.x.copy_(self.x0)
        self.state.copy_(self.s0)

    def state_streamed_once(self) -> bool:
        return bool(torch.equal(self.state, self.s0 + 1))

    # ------------------------------------------------------------------ candidates (one step each)
    def cublas(self, state: bool = False, prefetch: bool = False, resident: bool = False) -> None:
        """``mm`` then ``addmm`` a layer; with ``state`` each layer's state streamed by its own launch between
        them; with ``prefetch`` the next layer's weights read into L2 on a side stream while this layer runs;
        ``resident``: every layer multiplies layer 0's weights (which then stay in L2: the bound on prefetching)."""
        di = self.shape[2]
        for layer in range(self.layers):
            w_in, w_out = (self.w_in[0], self.w_out[0]) if resident else (self.w_in[layer], self.w_out[layer])
            if prefetch and layer + 1 < self.layers:
                self._prefetch(layer + 1)
            torch.mm(self.x, w_in.t(), out=self.u)
            if state:
                _stream_kernel[(triton.cdiv(self.s_bytes, STREAM_BLOCK),)](self.state[layer], self.s_bytes,
                                                                            BLOCK=STREAM_BLOCK)
            torch.addmm(self.x, self.u[:, :di], w_out.t(), out=self.x)
        if prefetch and self.side is not None:
            torch.cuda.current_stream().wait_stream(self.side)

    def _prefetch(self, layer: int) -> None:
        """Layer ``layer``'s weights into L2, on the side stream once the main stream has reached this point
        (inline on the CPU)."""
        def read():
            for w in (self.w_in[layer], self.w_out[layer]):
                _prefetch_kernel[(triton.cdiv(w.numel(), PREFETCH_BLOCK),)](w, w.numel(), self.sink,
                                                                             BLOCK=PREFETCH_BLOCK)
        if self.side is None:
            read()
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            read()

    def triton_launches(self, config: tuple[int, ...]) -> None:
        bn_in, bn_out, bk, stages, warps = config
        d, e, di = self.shape
        m, bm = self.x.shape[0], _block_m(self.x.shape[0])
        for w_in, w_out in zip(self.w_in, self.w_out, strict=True):
            _tile_kernel[(triton.cdiv(m, bm) * triton.cdiv(e, bn_in),)](
                self.x, w_in, self.u, m, e, d, d, d, e, BLOCK_M=bm, BLOCK_N=bn_in, BLOCK_K=bk, STAGES=stages,
                RESIDUAL=False, num_warps=warps)
            _tile_kernel[(triton.cdiv(m, bm) * triton.cdiv(d, bn_out),)](
                self.u, w_out, self.x, m, d, di, e, di, d, BLOCK_M=bm, BLOCK_N=bn_out, BLOCK_K=bk, STAGES=stages,
                RESIDUAL=True, num_warps=warps)

    def _persistent_args(self, config: tuple[int, ...], work: bool, state: bool, sync: bool):
        bn_in, bn_out, bk, stages, warps = config
        d, e, di = self.shape
        m = self.x.shape[0]
        args = (self.x, self.u, self.w_in, self.w_out, self.state, self.counter, self.flag)
        sizes = (m, self.s_bytes, d, e, di)
        consts = dict(BLOCK_M=_block_m(m), BN_IN=bn_in, BN_OUT=bn_out, BLOCK_K=bk, STAGES=stages, WORK=work,
                      STATE=state, S_BLOCK=STREAM_BLOCK, SYNC=sync, SPINS=SPIN_LIMIT, num_warps=warps)
        return args, sizes, consts

    def resident(self, config: tuple[int, ...], per_sm: int, state: bool) -> str | None:
        """Why ``per_sm`` programs of this build cannot all be resident on one SM (registers, shared memory,
        warps), or None; a barrier over programs that are not all resident would wait forever."""
        args, sizes, consts = self._persistent_args(config, True, state, True)
        kernel = _persistent_kernel.warmup(*args, 0, 0, *sizes, grid=(1,), **consts)
        kernel._init_handles()  # loads the binary: its register count
        props = torch.cuda.get_device_properties(self.x.device)
        warps = config[4]
        regs = -(-kernel.n_regs // 8) * 8 * 32 * warps  # allocated a warp at a time, 8 a thread at a time
        shared = kernel.metadata.shared + 1024  # the runtime reserves 1 KB a block
        if per_sm * regs > props.regs_per_multiprocessor:
            return f"{per_sm} x {kernel.n_regs} registers x {32 * warps} threads exceed the SM's"
        if per_sm * shared > props.shared_memory_per_multiprocessor:
            return f"{per_sm} x {shared} bytes of shared memory exceed the SM's"
        if per_sm * warps * 32 > props.max_threads_per_multi_processor:
            return f"{per_sm} x {warps} warps exceed the SM's"
        return None

    def persistent(self, config: tuple[int, ...], programs: int, sync: bool, work: bool = True,
                   state: bool = False) -> None:
        """One launch (``sync``), or one launch a phase through the same code (the interpreter's way)."""
        args, sizes, consts = self._persistent_args(config, work, state, sync)
        phases = (3 if state else 2) * self.layers
        spans = [(0, phases - 1)] if sync else [(p, p) for p in range(phases)]
        if sync:
            self.counter.zero_()
        for first, last in spans:
            _persistent_kernel[(programs,)](*args, first, last, *sizes, **consts)

    def empty_launches(self) -> None:
        for _ in range(2 * self.layers):
            _empty_kernel[(1,)](self.x)


def measure(rows: int, shape: tuple[int, int, int], layers: int, state_bytes: int, configs: str, sms: int,
            per_sm: list[int], sync: bool, device: torch.device, dtype: torch.dtype, warmup: int, reps: int) -> dict:
    chain = Chain(rows, shape, layers, state_bytes, device, dtype)
    # name -> (one step, the fp32 result it must reach or None, whether it streams the state)
    prefetched, resident = "next layer's weights prefetched into L2", "one layer's weights (L2-resident)"
    cands = {"launches cublas": (chain.cublas, chain.want, False),
             "launches cublas + state": (lambda: chain.cublas(state=True), chain.want, True),
             f"launches cublas, {prefetched}": (lambda: chain.cublas(prefetch=True), chain.want, False),
             f"launches cublas + state, {prefetched}": (lambda: chain.cublas(state=True, prefetch=True), chain.want,
                                                        True),
             f"launches cublas, {resident}": (lambda: chain.cublas(resident=True), chain.want_resident, False),
             f"launches cublas + state, {resident}": (lambda: chain.cublas(state=True, resident=True),
                                                      chain.want_resident, True),
             "launches empty": (chain.empty_launches, None, False),
             "persistent barriers only": (lambda: chain.persistent((16, 16, 16, 1, 4), sms, sync, work=False), None,
                                          False)}
    skipped = {}
    for spec in configs.split(","):
        config = tuple(int(v) for v in spec.split("x"))
        cands[f"launches triton {spec}"] = (lambda config=config: chain.triton_launches(config), chain.want, False)
        for n in per_sm:
            tag = "" if n == 1 else f", {n} an SM"
            for state in (False, True):
                name = f"persistent {spec}{' + state' if state else ''}{tag}"
                why = chain.resident(config, n, state) if sync else None
                if why:
                    skipped[name] = {"skipped": f"not all resident: {why}"}
                    continue
                cands[name] = (lambda config=config, n=n, state=state: chain.persistent(config, sms * n, sync,
                                                                                       state=state), chain.want, state)
    result = {}
    for name, (call, want, streams) in cands.items():
        chain.reset()
        chain.flag.zero_()
        try:
            call()
            row = {"max_rel_err": None if want is None else rel_diff(chain.x, want)}
            if streams:
                row["state_streamed_once"] = chain.state_streamed_once()
            if chain.flag.item():  # a barrier waited in vain: timing it would only repeat the wait
                result[name] = {**row, "barrier_gave_up": True}
                continue
            ms = graph_ms(call, device, warmup, reps)
        except Exception as exc:  # a config the card cannot run (shared memory) is reported, not fatal
            result[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            continue
        row["us_a_layer"] = round(ms * 1e3 / layers, 2)
        if name.startswith("persistent"):
            row["barrier_gave_up"] = bool(chain.flag.item())
        result[name] = row
        print(f"rows {rows} {name}: {row}", flush=True)
    return result | skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="32,128", help="comma-separated rows (2 x batch with CFG)")
    ap.add_argument("--configs", default=CONFIGS, help="comma-separated BNinxBNoutxBLOCK_KxSTAGESxWARPS")
    ap.add_argument("--programs-per-sm", default="1,2",
                    help="comma-separated programs an SM for the persistent kernel (a build that cannot have them all "
                         "resident is skipped)")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    device = device_for(args.smoke, "persistent_layers")
    cuda = device.type == "cuda"
    shape, layers, configs = (SMOKE_SHAPE, SMOKE_LAYERS, SMOKE_CONFIGS) if args.smoke else (SHAPE, LAYERS, args.configs)
    rows = [4] if args.smoke else [int(r) for r in args.rows.split(",")]
    dtype = torch.float32 if args.smoke else torch.bfloat16
    warmup, reps = (0, 1) if args.smoke else (10, 30)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 2
    per_sm = [int(v) for v in args.programs_per_sm.split(",")] if cuda else [1]
    state_bytes = STATE_BYTES[args.smoke]
    results = {f"rows {r}": measure(r, shape, layers, state_bytes, configs, sms, per_sm, cuda, device, dtype,
                                    warmup, reps) for r in rows}
    report = {"gpu": torch.cuda.get_device_name() if cuda else "none (CPU smoke run)", "dtype": str(dtype),
              "shape": {"d_model": shape[0], "in_proj_out": shape[1], "out_proj_in": shape[2]}, "layers": layers,
              "state_bytes_a_row_and_layer": state_bytes, "sms": sms, "programs_per_sm": per_sm, "one_launch": cuda,
              "results": results}
    write_result("persistent_layers", report, smoke_out("persistent_layers", args.out, args.smoke), quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
