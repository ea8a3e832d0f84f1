"""Plots of committed benchmark results: ``python benchmarks/plot.py`` -> docs/img/*.png (shown in docs/benchmarks.md).

    python benchmarks/plot.py [--images DIR]
    python benchmarks/plot.py --smoke --images DIR   # the same plots, into DIR; fails if one is not drawn
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "img"


def _figure(width: float, height: float, cols: int = 1):
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, cols, i + 1) for i in range(cols)]


def sampling(path: Path = RESULTS / "sampling_h200.json", images: Path = IMAGES) -> Path | None:
    """Images/s of every fixed-length row next to its memory floor."""
    if not path.exists():
        return None
    rows = [r for r in json.loads(path.read_text())["rows"] if "tokens" not in r]
    fig, (ax,) = _figure(8, 4.8)
    labels = [f"{r['model']} b{r['batch']}" for r in rows]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r.get("floor_images_per_s") or 0 for r in rows], height=0.4, color="lightgray",
            label="memory floor of the state layout")
    ax.barh([i - 0.2 for i in y], [r["images_per_s"] for r in rows], height=0.4, color="tab:blue", label="measured")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (256 tokens, CFG 2, bf16 weights, one H200)")
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.38, right=0.97, bottom=0.12, top=0.97)
    out = images / "sampling_h200.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def sequence_length(path: Path = RESULTS / "sampling_h200.json", images: Path = IMAGES) -> Path | None:
    """Time and peak memory per image against tokens per image: recurrent state vs KV cache."""
    if not path.exists():
        return None
    rows = [r for r in json.loads(path.read_text())["rows"] if "tokens" in r]
    if not rows:
        return None
    fig, (a1, a2) = _figure(8, 3.4, cols=2)
    for family, color in (("aim-b", "tab:blue"), ("gpt-b", "tab:orange")):
        sel = sorted((r for r in rows if family in r["model"]), key=lambda r: r["tokens"])
        toks = [r["tokens"] for r in sel]
        a1.plot(toks, [1e3 / r["images_per_s"] for r in sel], "o-", color=color, label=family.upper())
        a2.plot(toks, [r["peak_mem_gib"] for r in sel], "o-", color=color, label=family.upper())
    a1.set_ylabel("ms per image (batch 16, CFG 2)")
    a2.set_ylabel("peak GiB (batch 16, CFG 2)")
    for ax in (a1, a2):
        ax.set_xlabel("tokens per image")
        ax.set_xticks([256, 576, 1024])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.96, wspace=0.3)
    out = images / "sequence_length_h200.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _batch_bars(series: dict[str, dict[int, float]], out: Path) -> Path:
    """Images/s bars grouped by batch size, one colour per series (one H100's rows)."""
    batches = sorted({b for v in series.values() for b in v})
    return _grouped_bars(series, batches, [f"batch {b}" for b in batches],
                         "images / s (256 tokens, CFG 2, bf16, one H100)", out)


def _grouped_bars(series: dict[str, dict], groups: list, ticks: list[str], ylabel: str, out: Path) -> Path:
    """Bars grouped by ``groups`` (labelled ``ticks``), one colour per series; a series may lack a group."""
    fig, (ax,) = _figure(8, 4)
    width = 0.8 / len(series)
    colours = colormaps["tab10" if len(series) <= 10 else "tab20"].colors  # no colour twice
    for k, (name, by_group) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, g in enumerate(groups) if g in by_group]
        ax.bar(xs, [by_group[g] for g in groups if g in by_group], width=width, label=name, color=colours[k])
    ax.set_xticks(range(len(groups)), ticks)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.97)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def baseline(paths: tuple[Path, ...] = (RESULTS / "sampling_quick_h100.json", RESULTS / "sampling_gpt_l_h100.json"),
             images: Path = IMAGES) -> Path | None:
    """Images/s per batch: avgkit's compiled transformer, LlamaGen's compiled sampler and AiM, from one card's runs."""
    rows = [r for p in paths if p.exists() for r in json.loads(p.read_text())["rows"]
            if r["model"].startswith(("avgkit gpt", "LlamaGen", "avgkit aim-b bf16-state", "avgkit aim-b int8-state"))
            and not r["model"].endswith("one-launch")]
    if not rows:
        return None
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        name = r["model"].removesuffix(" two-launch")
        series.setdefault(name, {})[r["batch"]] = r["images_per_s"]
    return _batch_bars(series, images / "sampling_baseline_h100.png")


def training(paths: tuple[Path, ...] = (RESULTS / "train_step_compile_blocks_h200.json",
                                        RESULTS / "train_step_compile_blocks_ref_aim_l_h200.json"),
             images: Path = IMAGES, name: str = "train_step_h200.png", card: str = "one H200") -> Path | None:
    """Training tokens/s of each row beside the AiM authors' trainer step, one card (each file one call)."""
    rows = [(i, r) for i, p in enumerate(paths) if p.exists() for r in json.loads(p.read_text())["rows"]]
    if not rows:
        return None
    fig, (ax,) = _figure(8.5, 0.8 + 0.2 * len(rows))
    labels = [f"{r['model']} b{r['batch']}" + (f" (call {i + 1})" if len(paths) > 1 else "") for i, r in rows]
    colors = ["tab:gray" if r["model"].startswith(("mamba-ssm", "AiM reference")) else
              "tab:blue" if "compile" in r["model"] else "tab:cyan" for _, r in rows]
    ax.barh(range(len(rows)), [r["tokens_per_s"] / 1e3 for _, r in rows], color=colors)
    for i, (_, r) in enumerate(rows):
        ax.text(r["tokens_per_s"] / 1e3, i, f" {r['peak_mem_gib']:.0f} GiB", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15 * max(r["tokens_per_s"] for _, r in rows) / 1e3)
    ax.set_xlabel(f"k tokens / s, batch 64, bf16, {card} (label: peak memory)")
    fig.subplots_adjust(left=0.45, right=0.97, bottom=0.6 / (0.8 + 0.2 * len(rows)), top=0.98)
    out = images / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def training_h100(images: Path = IMAGES) -> Path | None:
    """The one-op mixer core against its three ops, beside the reference; then AiM-B and AiM-L with the reference
    run first (AiM-L with the scan's chunk at 256, 64 and 128 tokens; four H100 calls, each one process)."""
    return training((RESULTS / "train_step_core_first_h100.json", RESULTS / "train_step_core_strides_h100.json",
                     RESULTS / "train_step_tune_b_h100.json", RESULTS / "train_step_tune_l_chunk_h100.json"), images,
                    "train_step_h100.png", "H100s")


def decode_split(path: Path = RESULTS / "sampling_split_h100.json", images: Path = IMAGES,
                 name: str = "sampling_split_h100.png", rule: str = "rule of the time") -> Path | None:
    """AiM-B's images/s with each state-update split beside the compiled GPT-B, per batch (one H100 call)."""
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["model"] == "avgkit gpt-b compiled" or "two-launch" in r["model"] or r.get("decode_form") == "chunked":
            tile = r.get("step_tile")
            split = rule if not tile else f"{tile['block_p']} x {tile['num_warps']} warps" + (
                ", conv first" if tile.get("preconv") else "") + (", norm deferred" if tile.get("defer_norm") else "") + (
                f", {tile['max_registers']} registers" if tile.get("max_registers") else "")
            if r.get("decode_form") == "chunked":
                split = "chunked, " + ("its rule" if not tile else split)
            label = "GPT-B compiled" if "gpt" in r["model"] else f"AiM-B {r['state_dtype']}, {split}"
            series.setdefault(label, {})[r["batch"]] = r["images_per_s"]
    if not series:
        return None
    return _batch_bars(series, images / name)


def decode_preconv(images: Path = IMAGES) -> Path | None:
    """The same with the conv in its own launch (``StepTile.preconv``) beside the rule of the time."""
    return decode_split(RESULTS / "sampling_preconv_h100.json", images, "sampling_preconv_h100.png")


def decode_defer(images: Path = IMAGES) -> Path | None:
    """The same with the norm deferred to the block boundary (the rule) beside the rule before it."""
    return decode_split(RESULTS / "sampling_defer_h100.json", images, "sampling_defer_h100.png",
                        rule="rule: conv first, norm deferred")


def decode_chunked(images: Path = IMAGES) -> Path | None:
    """The chunked form (the state written once a window) beside the recurrent rule and GPT-B."""
    return decode_split(RESULTS / "sampling_chunked_h100.json", images, "sampling_chunked_h100.png",
                        rule="recurrent, its rule")


def _named_rows(path: Path, names: dict[str, str], out: Path) -> Path | None:
    """Images/s bars by batch of the rows ``names`` maps to a label (one call's file), or ``None`` without any."""
    if not path.exists():
        return None
    series: dict[str, dict[int, float]] = {}
    for r in json.loads(path.read_text())["rows"]:
        if r["model"] in names:
            series.setdefault(names[r["model"]], {})[r["batch"]] = r["images_per_s"]
    return _batch_bars(series, out) if series else None


def decode_int8(images: Path = IMAGES) -> Path | None:
    """The recipe's default (int8 state, conversion-free kernels) beside the bf16 state and GPT-B (one H100 call)."""
    names = {"avgkit gpt-b compiled": "GPT-B compiled", "avgkit aim-b int8-state": "AiM-B, default (int8 state)",
             "avgkit aim-b bf16-state two-launch": "AiM-B, bf16 state", "avgkit aim-b fp32-state": "AiM-B, fp32 state"}
    return _named_rows(RESULTS / "sampling_confirm_h100.json", names, images / "sampling_int8_h100.png")


def launches(path: Path = RESULTS / "persistent_layers_prefetch_h100.json", images: Path = IMAGES) -> Path | None:
    """Microseconds a layer of the step's two projections: launches, one persistent launch with grid barriers, the
    weights prefetched into L2 or resident there (``persistent_layers.py``, one H100 call)."""
    if not path.exists():
        return None

    def best(rows: dict, prefix: str) -> float:
        return min(v["us_a_layer"] for k, v in rows.items() if k.startswith(prefix) and "+ state" not in k
                   and "barriers" not in k and "us_a_layer" in v)

    names = {"two empty launches": "launches empty", "two grid barriers": "persistent barriers only",
             "cuBLAS, two launches": "launches cublas",
             "cuBLAS, weights prefetched into L2": "launches cublas, next layer's weights prefetched into L2",
             "cuBLAS, weights resident in L2": "launches cublas, one layer's weights (L2-resident)"}
    bars: dict[str, dict[str, float]] = {}
    for key, rows in json.loads(path.read_text())["results"].items():
        label = key.replace("rows ", "") + " rows"
        for name, row in names.items():
            bars.setdefault(name, {})[label] = rows[row]["us_a_layer"]
        bars.setdefault("Triton, two launches (best tiling)", {})[label] = best(rows, "launches triton")
        bars.setdefault("one persistent launch (best tiling)", {})[label] = best(rows, "persistent ")
    groups = list(next(iter(bars.values())))
    return _grouped_bars(bars, groups, groups, "us a layer (in_proj + out_proj, AiM-B, one H100)",
                         images / "launches_h100.png")


def decode_fused_in_proj(path: Path = RESULTS / "sampling_fused_in_proj_h100.json", images: Path = IMAGES
                         ) -> Path | None:
    """AiM-B's states with the conv in its own launch and in ``in_proj``'s epilogue (``step_kernel:
    fused-in-proj``), beside the compiled GPT-B (one H100 call; the variant rows timed interleaved)."""
    if not path.exists():
        return None
    kernels = {"two-launch": "conv in its own launch", "fused-in-proj": "conv in in_proj's epilogue"}
    series: dict[str, dict[int, float]] = {}
    for r in json.loads(path.read_text())["rows"]:
        if r["model"] == "avgkit gpt-b compiled":
            series.setdefault("GPT-B compiled", {})[r["batch"]] = r["images_per_s"]
        elif r.get("step_kernel") in kernels:
            label = f"AiM-B {r['state_dtype']} state, {kernels[r['step_kernel']]}"
            series.setdefault(label, {})[r["batch"]] = r["images_per_s"]
    return _batch_bars(series, images / "sampling_fused_in_proj_h100.png") if series else None


def decode_draw(path: Path = RESULTS / "sampling_draw_h100.json", images: Path = IMAGES) -> Path | None:
    """AiM-B's default with the draw as one Triton kernel and by PyTorch ops, beside the compiled GPT-B (one H100
    call)."""
    names = {"avgkit gpt-b compiled": "GPT-B compiled (its draw: one kernel)",
             "avgkit aim-b int8-state": "AiM-B default, the draw as one kernel",
             "avgkit aim-b int8-state torch draw": "AiM-B default, the draw by PyTorch ops"}
    return _named_rows(path, names, images / "sampling_draw_h100.png")


def decode_fused_rule(path: Path = RESULTS / "sampling_fused_rule_h100.json", images: Path = IMAGES) -> Path | None:
    """AiM-B's default before (two-launch) and after (auto) and with the block boundary folded into ``out_proj``,
    beside the compiled GPT-B (one H100 call; the AiM-B rows timed interleaved)."""
    names = {"avgkit gpt-b compiled": "GPT-B compiled",
             "avgkit aim-b int8-state two-launch": "AiM-B int8, two-launch (the default before)",
             "avgkit aim-b int8-state auto unfolded": "AiM-B int8, auto (the default now)",
             "avgkit aim-b int8-state auto": "AiM-B int8, auto, boundary folded into out_proj (backed out)"}
    return _named_rows(path, names, images / "sampling_fused_rule_h100.png")


def decode_prefill_words(path: Path = RESULTS / "sampling_words_h100.json", images: Path = IMAGES) -> Path | None:
    """AiM-B's default with its class token by one decode step and its int8 state as words, beside the class token
    through the scan and the state bytewise, and the compiled GPT-B (one H100 call; the AiM-B rows interleaved)."""
    names = {"avgkit gpt-b compiled": "GPT-B compiled",
             "avgkit aim-b int8-state prefill scan": "AiM-B default, class token through the scan (before)",
             "avgkit aim-b int8-state": "AiM-B default, class token by one step (now)",
             "avgkit aim-b int8-state two-launch split 32x4:pc:dn:r64": "AiM-B int8 two-launch, state bytewise",
             "avgkit aim-b int8-state two-launch": "AiM-B int8 two-launch, state as words"}
    return _named_rows(path, names, images / "sampling_prefill_words_h100.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=IMAGES, help="where the PNGs go (default docs/img)")
    ap.add_argument("--smoke", action="store_true",
                    help="checks that every plot is drawn from the committed results (exit 1 if one is not)")
    args = ap.parse_args(argv)
    if args.smoke and args.images.resolve() == IMAGES.resolve():
        ap.error("--smoke draws into a scratch folder: pass --images DIR")
    drawn = {fn.__name__: fn(images=args.images)
             for fn in (sampling, baseline, sequence_length, training, training_h100, decode_split, decode_preconv,
                                 decode_defer, decode_chunked, decode_int8, launches, decode_fused_in_proj, decode_draw,
                                 decode_fused_rule, decode_prefill_words)}
    for name, path in drawn.items():
        print(f"{name}: {path}")
    missing = [name for name, path in drawn.items() if path is None]
    if args.smoke and missing:
        print(f"not drawn (results missing or empty): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
