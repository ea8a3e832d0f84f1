"""Every benchmark script still runs: each one's ``--smoke`` mode, on the CPU, at tiny sizes.

The benchmarks measure on a GPU, so nothing else in the suite would notice one of them
breaking. A smoke run takes the script's own measurement code at tiny sizes on the CPU
(Triton kernels under ``TRITON_INTERPRET=1``, which the scripts set themselves), writes
its JSON to a scratch folder, and this test checks what was written. The numbers mean
nothing.

To cover another script, add a ``Smoke`` to ``CASES``: the command line (``{tmp}`` is
the test's scratch folder), the file it writes, the top-level keys that file must have
and, optionally, a function that checks the parsed JSON further.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Smoke:
    script: str  # from the repository root; .py runs with this Python, .sh with bash
    args: tuple[str, ...] = ("--smoke", "--out", "{tmp}/out.json")
    result: str | None = "out.json"  # the JSON the run writes, in {tmp}
    keys: tuple[str, ...] = ()  # top-level keys it must have
    check: Callable[[dict[str, Any]], None] | None = None
    files: tuple[str, ...] = ()  # other files the run must write, in {tmp}
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment ({tmp}, {python})
    timeout: float = 180.0
    slow: bool = False  # over ~10 s: marked slow (-m "not slow" leaves it out)
    setup: Callable[[Path], None] | None = None  # prepares {tmp} before the run
    mode: str = ""  # names a second smoke case of the same script

    @property
    def id(self) -> str:
        return Path(self.script).stem + (f"-{self.mode}" if self.mode else "")


def _rows(n: int, *keys: str) -> Callable[[dict[str, Any]], None]:
    """``rows`` holds ``n`` rows, each with ``keys``."""

    def check(report: dict[str, Any]) -> None:
        assert len(report["rows"]) == n, report["rows"]
        for row in report["rows"]:
            assert set(keys) <= set(row), row

    return check


def _activation_memory(report: dict[str, Any]) -> None:
    plain, recomputed, saved = report["rows"]
    assert plain["recompute_norms"] is False and recomputed["recompute_norms"] is True
    assert 0 < recomputed["block_MiB_batch2"] < plain["block_MiB_batch2"]
    assert "saved_by_recompute_GiB_aim_b_24_layers_batch64" in saved
    peak = {(r["loss"], r["activation_checkpointing"]): r for r in report["peak"]}
    assert set(peak) == {("plain", "none"), ("chunked", "none"), ("chunked", "every_n"), ("chunked", "blocks")}
    kept = {k: r["kept_for_backward_MiB"] for k, r in peak.items()}
    assert kept[("chunked", "blocks")] < kept[("chunked", "every_n")] < kept[("chunked", "none")], kept
    assert all(r["peak_GiB"] >= 0 and r["params"] == peak[("plain", "none")]["params"] for r in peak.values())


def _data_loader(report: dict[str, Any]) -> None:
    assert set(report["results"]) == {"memory", "zarr-cached", "zarr-uncached"}
    for mode in report["results"].values():
        assert mode["tokens_per_s"] > 0 and mode["batches_per_s"] > 0


def _ssd_scan(report: dict[str, Any]) -> None:
    results = report["results"]
    for impl in ("triton", "triton-dcb-split", "torch"):
        assert {"first_call_s", "fwd_ms", "fwd_bwd_ms"} <= set(results[impl]), results[impl]
    assert "skipped" in results["mamba_ssm"] or "fwd_ms" in results["mamba_ssm"]
    sweep = results["dcb_sweep"]  # the dCB kernel's tiles and head splits give the same gradients
    assert list(sweep) == ["4x1", "4x2", "8x2"], sweep
    assert all(r["fwd_bwd_ms"] > 0 and r["max_rel_diff"] < 1e-5 for r in sweep.values()), sweep


def _decode_linear(report: dict[str, Any]) -> None:
    # every candidate ran both projections and matched the fp32 product (the smoke runs in fp32)
    assert set(report["results"]) == {"in_proj rows 4", "out_proj rows 4", "out_proj normed rows 4",
                                      "in_proj with conv rows 4"}, report["results"]
    for key, per in report["results"].items():
        want = ({"norm kernel + cublas", "triton norm-folded 0x16x16x2x4"} if "normed" in key
                else {"cublas + conv kernel", "triton conv-folded prototype 0x16x16x2x4",
                      "triton in_proj + conv + dt 0x16x16x2x4", "triton in_proj + conv + dt 0x16x16x2x4:late",
                      "triton in_proj + conv + dt, rule 16x16x16x1x4"}
                if "conv" in key
                else {"cublas", "triton 0x16x16x2x4"})
        assert set(per) == want, per
        assert all(row["us"] > 0 and row["max_rel_err"] < 1e-5 for row in per.values()), per


def _persistent_layers(report: dict[str, Any]) -> None:
    # every way of running the layers' chain reached the fp32 chain's result and streamed each state once
    rows = report["results"]["rows 4"]
    prefetched, resident = "next layer's weights prefetched into L2", "one layer's weights (L2-resident)"
    assert set(rows) == {"launches cublas", "launches cublas + state", f"launches cublas, {prefetched}",
                         f"launches cublas + state, {prefetched}", f"launches cublas, {resident}",
                         f"launches cublas + state, {resident}", "launches empty", "persistent barriers only",
                         "launches triton 16x16x16x2x4", "persistent 16x16x16x2x4",
                         "persistent 16x16x16x2x4 + state"}, rows
    assert all(row["us_a_layer"] > 0 for row in rows.values()), rows
    assert all(row["max_rel_err"] < 1e-5 for row in rows.values() if row["max_rel_err"] is not None), rows
    assert all(row["state_streamed_once"] for name, row in rows.items() if "+ state" in name), rows
    assert not any(row.get("barrier_gave_up") for row in rows.values()), rows


def _gated_norm(report: dict[str, Any]) -> None:
    settings = report["results"]["tiny"]  # rows loaded two at a time give the same results
    assert list(settings) == ["4x1x0", "4x2x0"], settings
    assert all(r["ms"] > 0 and r["max_rel_diff"] < 1e-5 for r in settings.values()), settings
    assert report["fastest"]["tiny"] in settings


def _startup(report: dict[str, Any]) -> None:
    _rows(2, "import_and_build_s", "warmup_s", "steady_sample_s")(report)
    assert [r["start"] for r in report["rows"]] == ["cold", "warm"]


def _state_memory(report: dict[str, Any]) -> None:
    _rows(4, "model", "tokens", "state_MiB_per_image", "step_traffic_MiB_per_image")(report)
    assert all("dual_crossover_token" in r for r in report["rows"] if r["model"].startswith("aim"))


def _train_step(report: dict[str, Any]) -> None:
    _rows(7, "tokens_per_s", "tokens_per_s_spread", "windows", "step_s", "first_step_s", "peak_mem_gib", "mfu",
          "mfu_6n")(report)
    names = [r["model"] for r in report["rows"]]
    assert names == ["AiM reference tiny", "avgkit tiny plain", "avgkit tiny chunked", "avgkit tiny ckpt",
                     "avgkit tiny compile-blocks", "avgkit tiny compile-blocks-graph",
                     "avgkit tiny compile-blocks-loss-graph-knobs"], names  # the graph rows: eager here
    assert report["rows"][-1]["knobs"] == "triton_gated_norm.ROW_TILE=2" and "knobs" not in report["rows"][-2]
    for row in report["rows"]:
        low, high = row["tokens_per_s_spread"]
        assert row["windows"] >= 2 and low <= row["tokens_per_s"] <= high, row
        assert 0 < row["token_params"] < row["params"] and row["mfu"] > 0, row  # tables and adaLN left out
        assert 0 < row["host_fraction"] <= 1.0, row  # on the CPU the host does the work: near 1
    assert report["rows"][1]["vs_aim_reference"] > 0 and report["matmul_tflops"] > 0
    assert any("mamba-ssm stack" in note for note in report["notes"]), report["notes"]  # no GPU: none
    assert any("no causal-conv1d" in note for note in report["notes"]), report["notes"]
    assert set(report["profile"]) == {"tiny chunked"} and report["profile"]["tiny chunked"]["total_self_ms"] > 0


def _precision_check(report: dict[str, Any]) -> None:
    assert [(r["path"], r["seed"]) for r in report["rows"]] == [("today", 0), ("bf16", 0), ("today", 1)]
    assert all(r["final_loss"] > 0 and r["final_val_loss"] > 0 for r in report["rows"]), report["rows"]
    today = report["verdict"]["today"]["final_val_loss"]
    assert today["within_spread"] and today["mean_minus_today"] == 0
    assert set(report["verdict"]) == {"today", "bf16"}


def _vq_encode(report: dict[str, Any]) -> None:
    _rows(2, "precision", "images_per_s", "first_call_s", "peak_mem_gib")(report)
    assert [r["precision"] for r in report["rows"]] == ["fp32", "bf16"]


def _gpu_check_tiles(report: dict[str, Any]) -> None:
    rows = report["decode_kernel_timing"]
    assert {(r["state"], r["block_p"], r["num_warps"]) for r in rows} == {("bf16", 8, 1), ("int8", 8, 1)}, rows
    assert all(r["ms"] > 0 and r["state_rel_err"] < 1e-2 for r in rows), rows


def _gpu_check_decode(report: dict[str, Any]) -> None:
    failed = [r for r in report["checks"] if not r["ok"]]
    assert report["all_ok"] and not failed, failed
    cases = {r["case"] for r in report["checks"] if r["case"].startswith("AiM")}
    assert any("chunked form" in c and "int8" in c for c in cases), cases
    assert {"bf16", "int8"} <= {s for c in cases if "fused-in-proj" in c for s in ("bf16", "int8") if s in c}, cases
    deferred = {r["case"].split(" #")[0] for r in report["checks"] if "deferred norm" in r["case"]
                and "bytes" not in r["case"]}
    assert len(deferred) == 4, deferred  # bf16 and int8 states, each conv placement
    bytewise = {r["case"].split(" #")[0] for r in report["checks"] if "bytes" in r["case"]}
    assert len(bytewise) == 4 and all("int8" in c for c in bytewise), bytewise  # each conv placement, norm or not
    assert not any(r["case"].startswith("tiny:") for r in report["checks"])  # no scan cases


def _gpu_check(report: dict[str, Any]) -> None:
    failed = [r for r in report["checks"] if not r["ok"]]
    assert report["all_ok"] and not failed, failed
    cases = {r["case"].split(" ")[0] for r in report["checks"]}
    assert {"tiny:", "decode", "Mamba2Mixer(16)", "AiM"} <= cases, cases  # scan, step, mixer, backbone decode
    assert report["step_timing"] and {"triton_ms", "torch_ms"} <= set(report["step_timing"][0])
    pairs = {(r["state"], r["kernel"]) for r in report["decode_kernel_timing"]}
    assert pairs == {(s, k) for s in ("fp32", "bf16", "int8") for k in ("two-launch", "one-launch")}, pairs
    assert all(r["state_bytes"] > 0 for r in report["decode_kernel_timing"])


def _state_precision(report: dict[str, Any]) -> None:
    rows = report["decode_path"]["rows"]
    assert set(rows) == {"fp32", "bf16", "int8", "bf16/chunked", "int8/chunked"}, rows
    for sd, by_horizon in rows.items():
        assert set(by_horizon) == {"8", "16"}, by_horizon
        assert by_horizon["16"]["top1_agree"] >= 0.99 and by_horizon["16"]["kl_max"] < 1e-3, (sd, by_horizon)
    assert rows["fp32"]["16"]["max_logit_err"] < 1e-4  # fp32 state: decode = teacher forcing to rounding
    assert all(v["passes"] for v in report["verdict"].values()), report["verdict"]


def _ddp(report: dict[str, Any]) -> None:
    assert report["steps_compared"] == 2
    assert report["max_abs_loss_diff"] < 1e-4  # 2 gloo processes train like one with the same global batch
    assert set(report["eval"]) == {"1gpu", "2gpu"}


def _sampling(report: dict[str, Any]) -> None:
    names = [r["model"] for r in report["rows"]]
    splits = [" swept split", " split 64x4", " split 32x8:stream:h2:s2:pc:r64"]  # --step-tiles, then --step-splits
    assert names == ["avgkit gpt-b compiled", "LlamaGen GPT-B compiled", "avgkit aim-b int8-state",
                     "avgkit aim-b int8-state compiled", "avgkit aim-b int8-state torch draw",
                     "avgkit aim-b int8-state prefill scan",
                     *(row for v in ("bf16-state two-launch", "int8-state two-launch", "bf16-state chunked",
                                     "int8-state chunked")  # --chunked adds the chunked rows, --pdl the pdl rows
                       for row in (f"avgkit aim-b {v}", f"avgkit aim-b {v} pdl",
                                   *(f"avgkit aim-b {v}{t}" for t in splits))),
                     "avgkit aim-b bf16-state fused-in-proj", "avgkit aim-b int8-state fused-in-proj",
                     "avgkit aim-b int8-state auto"], names
    # --step-tiles: the fastest split of the report, by state kind; --step-splits: the same split for both
    assert all(bool(r.get("pdl")) == r["model"].endswith(" pdl") for r in report["rows"])
    assert sum(bool(r.get("pdl")) for r in report["rows"]) == 4
    tiles = {(r["state_dtype"], r["model"].split("two-launch ")[1]): r["step_tile"] for r in report["rows"]
             if "step_tile" in r and r["decode_form"] == "recurrent"}
    assert [r["step_tile"] for r in report["rows"] if "step_tile" in r and r["decode_form"] == "chunked"] == \
        [r["step_tile"] for r in report["rows"] if "step_tile" in r and r["decode_form"] == "recurrent"]
    plain = {"heads": 1, "stream": False, "stages": 1, "preconv": False, "max_registers": 0, "defer_norm": False,
             "words": False}
    fixed = {"split 64x4": {"block_p": 64, "num_warps": 4, **plain},
             "split 32x8:stream:h2:s2:pc:r64": {"block_p": 32, "num_warps": 8, "heads": 2, "stream": True, "stages": 2,
                                                "preconv": True, "max_registers": 64, "defer_norm": False,
                                                "words": False}}
    assert tiles == {("bf16", "swept split"): {**plain, "block_p": 32, "num_warps": 8, "heads": 2, "stream": True},
                     ("int8", "swept split"): {**plain, "block_p": 64, "num_warps": 4, "heads": 4, "preconv": True},
                     **{(st, k): v for st in ("bf16", "int8") for k, v in fixed.items()}}, tiles
    for row in report["rows"]:
        assert row["repeats"] >= 2 and row["spread_s"][0] <= row["median_s"] <= row["spread_s"][1], row
    avgkit_gpt, llamagen = report["rows"][:2]
    # the stand-in LlamaGen below is smaller than avgkit's tiny transformer: the run must say so
    assert report["notes"] == [f"not equal work: LlamaGen gpt-b has {llamagen['params']:,} parameters, avgkit's "
                               f"{avgkit_gpt['params']:,}"], report["notes"]


def _reproducibility(report: dict[str, Any]) -> None:
    models = {d["model"] for d in report["diagnosis"]}
    assert models == {"aim-b", "gpt-b"}
    for d in report["diagnosis"]:  # the CPU is deterministic: nothing may differ
        assert d["prefill_logits"] is None and d["prefill_state"] is None, d
        assert d["prefill_state_tensors_differing"] == [], d
        assert d["steps"]["checked"] > 1 and d["steps"]["differing"] == 0 and d["steps"]["first"] == [], d["steps"]
        assert d["sample_eager"]["images_differing"] == 0, d
    paths = {(r["model"], r["path"]) for r in report["matrix"]}
    assert paths == {(m, p) for m in models for p in ("eager", "compiled")}, paths
    assert all(r["repeat_call"] == "identical" and r["calls_of_1"] == "identical" for r in report["matrix"])
    assert {r["decode_width"] for r in report["matrix"]} == {3}  # --decode-width
    assert not report["notes"], report["notes"]


# Stand-in for LlamaGen's public code (what benchmarks/sampling.py imports from --llamagen-root): its
# GPT_models / ModelArgs / Transformer and generate() signatures, with a tiny model behind them.
LLAMAGEN_STUB = {
    "autoregressive/models/gpt.py": '''
from dataclasses import dataclass
import torch
from torch import nn

@dataclass
class ModelArgs:
    dim: int = 64
    n_layer: int = 2
    n_head: int = 4
    multiple_of: int = 32
    vocab_size: int = 64
    block_size: int = 16
    num_classes: int = 10
    cls_token_num: int = 1
    model_type: str = "c2i"

class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.model_type, self.num_classes = config, config.model_type, config.num_classes
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.dim)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        nn.init.zeros_(self.output.weight)

    def forward(self, idx, cond_idx=None, input_pos=None):
        x = self.cls_embedding(cond_idx)[:, None] if idx is None else self.tok_embeddings(idx)
        return self.output(x), None

def GPT_B(**kwargs):
    return Transformer(ModelArgs(dim=64, n_layer=2, n_head=4, **kwargs))

GPT_models = {"GPT-B": GPT_B}
''',
    "autoregressive/models/generate.py": '''
import torch

def generate(model, cond, max_new_tokens, emb_masks=None, cfg_scale=1.0, cfg_interval=-1, **sampling_kwargs):
    assert set(sampling_kwargs) == {"temperature", "top_k", "top_p", "sample_logits"}, sampling_kwargs
    assert float(model.output.weight.abs().sum()) > 0, "the benchmark draws the head: no all-tie logits"
    rows = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if cfg_scale > 1.0 else cond
    logits, _ = model(None, rows, None)
    tokens = [torch.multinomial(torch.softmax(logits[:, -1].float(), -1), 1)[: len(cond)]]
    for _ in range(max_new_tokens - 1):
        nxt = torch.cat([tokens[-1], tokens[-1]]) if cfg_scale > 1.0 else tokens[-1]
        logits, _ = model(nxt, None, None)
        tokens.append(torch.multinomial(torch.softmax(logits[:, -1].float(), -1), 1)[: len(cond)])
    return torch.cat(tokens, dim=1)
''',
}


# Stand-in for the AiM authors' public code (what benchmarks/train_step.py imports from --aim-root): their
# AiM(MambaConfig) / AiM_models constructors, forward(codes, labels) -> (logits, target), the per-layer
# use_mem_eff_path switch, and their trainer's compute_loss, with a tiny model behind them.
AIM_STUB = {
    "models/__init__.py": "",
    "models/stage2/__init__.py": "",
    "models/stage2/config_mamba.py": '''
from dataclasses import dataclass

@dataclass
class MambaConfig:
    d_model: int = 1024
    n_layer: int = 48
    vocab_size: int = 16384
    num_classes: int = 1000
    num_tokens: int = 256
    adaln_group: bool = False
    num_groups: int = 1
''',
    "models/aim.py": '''
import torch
from torch import nn
from .stage2.config_mamba import MambaConfig

class Mixer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.use_mem_eff_path = True  # the fused path needs causal-conv1d
        self.in_proj = nn.Linear(d, d)

    def forward(self, x):
        assert not self.use_mem_eff_path, "without causal-conv1d the harness must take the unfused path"
        return self.in_proj(x)

class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mixer = Mixer(d)

class Backbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cls_embed = nn.Embedding(c.num_classes + 1, c.d_model)
        self.word_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Layer(c.d_model) for _ in range(c.n_layer))

class Output:
    def __init__(self, logits):
        self.logits = logits

class LMHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.backbone = Backbone(c)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.num_tokens = c.num_tokens

    def forward(self, input_ids, cond):
        assert input_ids.dtype == torch.long and input_ids.shape[1] == self.num_tokens - 1, input_ids.shape
        assert cond.shape == (input_ids.shape[0], 1) and cond.dtype == torch.long, cond.shape
        h = torch.cat([self.backbone.cls_embed(cond), self.backbone.word_embeddings(input_ids)], 1)
        for layer in self.backbone.layers:
            h = h + layer.mixer(h)
        return Output(self.lm_head(h))

class AiM(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.vqvae = nn.Linear(2, 2).requires_grad_(False)  # the frozen tokenizer
        self.mamba = LMHead(config)

    def forward(self, x, c):
        assert torch.is_autocast_enabled(x.device.type), "the reference trains under bf16 autocast"
        code = x.squeeze(1)
        cond = c.view(-1, 1).contiguous().long()
        logits = self.mamba(code[:, :-1], cond=cond).logits
        return logits[:, cond.shape[1] - 1:], code

def AiM_B(**kwargs):
    return AiM(MambaConfig(d_model=64, n_layer=2, **kwargs))

AiM_models = {"AiM-B": AiM_B}
''',
    "trainer.py": '''
import torch
from transformers import Trainer

class Stage2Trainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False):
        logits, target = model(inputs["inputs"], inputs["labels"])
        logits = logits.view(-1, logits.shape[-1])
        target = target.view(-1)
        loss = torch.nn.CrossEntropyLoss()(logits, target)
        return (loss, None) if return_outputs else loss
''',
}


def _aim_stub(tmp: Path) -> None:
    for name, text in AIM_STUB.items():
        (tmp / "aim" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "aim" / name).write_text(text)


def _llamagen_stub(tmp: Path) -> None:
    for name, text in LLAMAGEN_STUB.items():
        (tmp / "llamagen" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "llamagen" / name).write_text(text)


def _sampling_setup(tmp: Path) -> None:
    """LlamaGen's stand-in and a --tiles report whose fastest splits differ by state kind."""
    _llamagen_stub(tmp)

    def row(state: str, bp: int, w: int, h: int, st: bool, ms: float, pc: bool = False) -> dict:
        return {"state": state, "batch": 2, "nheads": 4, "block_p": bp, "num_warps": w, "heads": h, "stream": st,
                "ms": ms, "preconv": pc}

    timing = [row("bf16", 64, 8, 1, False, 0.05), row("bf16", 32, 8, 2, True, 0.04),
              row("int8", 64, 4, 4, False, 0.03, True), row("int8", 32, 8, 2, True, 0.035)]
    (tmp / "tiles.json").write_text(json.dumps({"decode_kernel_timing": timing}))


ENVIRONMENT = ("environment",)
CASES: list[Smoke] = [
    Smoke("benchmarks/activation_memory.py", keys=(*ENVIRONMENT, "model", "rows"), check=_activation_memory),
    Smoke("benchmarks/data_loader.py", keys=("benchmark", "setup", "results", "meets_target", "machine"),
          check=_data_loader),
    Smoke("benchmarks/plot.py", args=("--smoke", "--images", "{tmp}/img"), result=None,
          files=("img/sampling_h200.png", "img/sampling_baseline_h100.png", "img/sequence_length_h200.png",
                 "img/train_step_h200.png", "img/train_step_h100.png", "img/sampling_split_h100.png",
                 "img/launches_h100.png")),
    Smoke("benchmarks/ssd_scan.py", args=("--smoke", "--dcb-sweep", "smoke", "--out", "{tmp}/out.json"),
          keys=("gpu", "triton", "shape", "results"), check=_ssd_scan),
    Smoke("benchmarks/gated_norm.py", keys=(*ENVIRONMENT, "gpu", "results", "fastest"), check=_gated_norm),
    Smoke("benchmarks/decode_linear.py", keys=(*ENVIRONMENT, "gpu", "results", "fastest"), check=_decode_linear),
    Smoke("benchmarks/persistent_layers.py", keys=(*ENVIRONMENT, "gpu", "results", "sms", "programs_per_sm"),
          check=_persistent_layers),
    Smoke("benchmarks/startup.py", keys=(*ENVIRONMENT, "model", "rows"), check=_startup),
    Smoke("benchmarks/state_precision.py", keys=(*ENVIRONMENT, "decode_path", "gate", "verdict"),
          check=_state_precision),
    Smoke("benchmarks/state_memory.py", keys=(*ENVIRONMENT, "dtype", "rows"), check=_state_memory),
    Smoke("benchmarks/train_step.py", args=("--smoke", "--aim-root", "{tmp}/aim", "--profile", "{tmp}/profile",
                                            "--variants", "plain,chunked,ckpt,compile-blocks,compile-blocks-graph,"
                                            "compile-blocks-loss-graph-knobs", "--reference-first",
                                            "--knobs", "triton_gated_norm.ROW_TILE=2",
                                            "--compile-backend", "aot_eager", "--out", "{tmp}/out.json"),
          keys=(*ENVIRONMENT, "matmul_tflops", "timing", "rows", "notes", "profile"), check=_train_step,
          files=("profile.txt", "profile.json"), setup=_aim_stub),
    Smoke("benchmarks/vq_encode.py", keys=(*ENVIRONMENT, "tokenizer", "image_size", "rows"), check=_vq_encode),
    Smoke("plugins/mamba/scripts/gpu_check.py", keys=("gpu", "all_ok", "checks", "step_timing"), check=_gpu_check),
    Smoke("plugins/mamba/scripts/gpu_check.py", args=("--smoke", "--step-only", "int8", "--step-split", "8x4:pc:dn"),
          result=None, mode="step-only"),
    Smoke("plugins/mamba/scripts/gpu_check.py", args=("--smoke", "--step-only", "bf16", "--step-form", "chunked"),
          result=None, mode="step-only-chunked"),
    Smoke("plugins/mamba/scripts/gpu_check.py", args=("--smoke", "--decode", "--out", "{tmp}/out.json"),
          mode="decode", keys=("gpu", "all_ok", "checks"), check=_gpu_check_decode),
    Smoke("plugins/mamba/scripts/gpu_check.py", args=("--smoke", "--tiles", "--out", "{tmp}/out.json"), mode="tiles",
          keys=("gpu", "decode_kernel_timing"), check=_gpu_check_tiles),
    Smoke("benchmarks/sampling.py", args=("--smoke", "--llamagen-root", "{tmp}/llamagen", "--aim-compile", "--chunked",
                                          "--pdl", "--torch-draw", "--prefill-scan", "--fused-in-proj",
                                          "--step-tiles", "{tmp}/tiles.json", "--step-splits", "64x4,32x8:stream:h2:s2:pc:r64",
                                          "--out", "{tmp}/out.json"),
          keys=(*ENVIRONMENT, "settings", "rows", "notes"), check=_sampling, setup=_sampling_setup),
    Smoke("benchmarks/precision_check.py", args=("--smoke", "--paths", "today,bf16", "--work", "{tmp}/runs", "--out",
                                                "{tmp}/out.json"),
          keys=(*ENVIRONMENT, "recipe", "seeds", "paths", "rows", "verdict"), check=_precision_check,
          timeout=400.0, slow=True),
    Smoke("benchmarks/reproducibility.py", args=("--smoke", "--decode-width", "3", "--out", "{tmp}/out.json"),
          keys=(*ENVIRONMENT, "diagnosis", "matrix", "notes"), check=_reproducibility, slow=True),
    Smoke("benchmarks/ddp_check.sh", args=("--smoke",), result="ddp/summary.json",
          keys=("steps_compared", "max_abs_loss_diff", "final_loss", "eval"), check=_ddp,
          files=("ddp/metrics_1gpu.jsonl", "ddp/metrics_2gpu.jsonl", "ddp/samples_2gpu.png"),
          env={"OUT": "{tmp}", "WORK": "{tmp}", "PYTHON": "{python}"}, timeout=300.0, slow=True),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_benchmark_smoke(case: Smoke, tmp_path: Path) -> None:
    fill = {"tmp": str(tmp_path), "python": sys.executable}
    if case.setup is not None:
        case.setup(tmp_path)
    launcher = ["bash"] if case.script.endswith(".sh") else [sys.executable]
    cmd = [*launcher, case.script, *(a.format(**fill) for a in case.args)]
    # one thread each: tiny shapes gain nothing from more, and test workers share the cores
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1",
           **{k: v.format(**fill) for k, v in case.env.items()}}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=case.timeout)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode} after {took:.1f} s\n" \
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    for name in case.files:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, f"{name} not written"
    if case.result is None:
        return
    report = json.loads((tmp_path / case.result).read_text())
    missing = [k for k in case.keys if k not in report]
    assert not missing, f"{case.result} lacks {missing}; has {sorted(report)}"
    if case.check is not None:
        case.check(report)


# benchmarks/ files that are not benchmarks, and benchmarks without a smoke run yet
NOT_SMOKED = {"benchmarks/common.py", "benchmarks/run_gpu.sh"}


def test_every_benchmark_script_has_a_smoke_case() -> None:
    """A new script in benchmarks/ comes with its smoke case (or is named in NOT_SMOKED)."""
    scripts = {str(p.relative_to(ROOT)) for pattern in ("*.py", "*.sh") for p in (ROOT / "benchmarks").glob(pattern)}
    missing = scripts - {c.script for c in CASES} - NOT_SMOKED
    assert not missing, f"no smoke case for {sorted(missing)}"
