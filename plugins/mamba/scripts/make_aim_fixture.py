"""Build numerical fixtures from the original AiM code (hp-l33/AiM + state-spaces/mamba).

The fixtures let the plugin's tests check weight compatibility and numerics against the
original implementation without needing it installed.  This script is only runnable
where both source trees are available (paths given on the command line); it needs
torch, einops and huggingface_hub, and optionally triton.

Outputs (into ``--out``):

* ``aim_tiny_<name>.weights.safetensors``: the ``mamba.``-prefixed state dict exactly as
  the original hub mixin writes it (``safetensors.torch.save_model`` on the wrapper, so the
  tied ``mamba.lm_head.weight`` is dropped and named in the file metadata).  The
  ``vqvae.`` half of a released checkpoint is left out: it is the tokenizer.
* ``aim_tiny_<name>.io.safetensors``: tokens, labels and the logits of the
  teacher-forced pass and of the step-by-step decoding path.
* ``aim_tiny_<name>.json``: the config (as the hub mixin's ``config.json`` would hold
  it), the conventions used and the self-checks that passed.
* ``aim_param_counts.json``: exact parameter counts of the original AiM-B/L/XL/1B and the
  adaLN ablation variants, built on the meta device.

Backends for the Mamba-2 kernels (the model code is unchanged in both):

* ``interpret`` (default): the original Triton kernels run on CPU through Triton's
  interpreter (``TRITON_INTERPRET=1``), one autotune config pinned per kernel.
* ``torch``: the Triton entry points are replaced by mamba-ssm's own pure-PyTorch
  reference functions (``ssd_chunk_scan_combined_ref``, ``ssd_minimal_discrete`` for the
  final state, ``selective_state_update_ref``, ``rms_norm_ref``).

Example::

    python make_aim_fixture.py --aim-src .ref/AiM --mamba-src .ref/mamba \\
        --extra-site /tmp/site --out plugins/mamba/tests/fixtures
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import pkgutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

NUM_CLASSES = 10
VOCAB_SIZE = 64
NUM_TOKENS = 16  # a 4x4 code grid
D_MODEL = 64  # d_model 128 would push the two weight files past the 2 MB budget
CFG_SCALE = 2.5
LABELS = (3, 7)
SEED = 0
PERTURB_SEED = 1
TOKEN_SEED = 2
DEVICE = "cpu"  # "cuda" for the native backend

# name -> (n_layer, adaln_group, num_groups).  Four layers with two groups tell the
# interleaved assignment (i mod G) apart from a blocked one (i // (n_layer / G)).
TINY_MODELS: dict[str, tuple[int, bool, int]] = {
    "adaln": (2, False, 1),
    "group2": (4, True, 2),
}

# Released sizes (AiM-1B is in the paper and the trainer's choices, not in AiM_models).
FULL_MODELS: dict[str, dict[str, Any]] = {
    "AiM-B": dict(d_model=768, n_layer=24, adaln_group=False),
    "AiM-L": dict(d_model=1024, n_layer=48, adaln_group=True, num_groups=4),
    "AiM-XL": dict(d_model=1536, n_layer=48, adaln_group=True, num_groups=4),
    "AiM-1B": dict(d_model=2048, n_layer=48, adaln_group=True, num_groups=4),
    "AiM-B adaLN-single (G=1)": dict(d_model=768, n_layer=24, adaln_group=True, num_groups=1),
    "AiM-L adaLN per layer": dict(d_model=1024, n_layer=48, adaln_group=False),
    "AiM-L adaLN-single (G=1)": dict(d_model=1024, n_layer=48, adaln_group=True, num_groups=1),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aim-src", type=Path, required=True, help="checkout of hp-l33/AiM")
    parser.add_argument("--mamba-src", type=Path, required=True, help="checkout of state-spaces/mamba")
    parser.add_argument("--extra-site", type=Path, action="append", default=[],
                        help="extra folder put on sys.path (e.g. einops, huggingface_hub)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fixture files")
    parser.add_argument("--backend", choices=("interpret", "torch", "native"), default="interpret",
                        help="native: the compiled Triton kernels on a CUDA device")
    parser.add_argument("--check-against", type=Path, default=None,
                        help="folder of fixtures made earlier: report the largest logit differences")
    return parser.parse_args()


def prepare_environment(args: argparse.Namespace) -> None:
    """Set what must be set before torch/triton are imported, and stub absent extras."""
    if args.backend == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"
    if args.backend == "native":
        os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # fp32 tl.dot, not TF32
    sys.path[:0] = [str(p.resolve()) for p in (*args.extra_site, args.mamba_src, args.aim_src)]
    # The package __init__ imports the compiled Mamba-1 scan; Mamba-2 never calls it.
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        from transformers.generation import GreedySearchDecoderOnlyOutput, SampleDecoderOnlyOutput, TextStreamer  # noqa: F401  names the original imports
        from transformers.utils import CONFIG_NAME, WEIGHTS_NAME  # noqa: F401
    except ImportError:  # absent, or a release that dropped these names
        _stub_transformers()


def _stub_transformers() -> None:
    """Stand-ins for the few transformers names the original code imports.

    They are output containers and hub download helpers, none of which the fixture's
    computations touch.
    """

    class _Output:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    class _TextStreamer:  # only referenced in type hints
        pass

    def _no_hub(*_: Any, **__: Any) -> None:
        raise RuntimeError("hub downloads are not available in the fixture builder")

    root = types.ModuleType("transformers")
    generation = types.ModuleType("transformers.generation")
    for name in ("GreedySearchDecoderOnlyOutput", "SampleDecoderOnlyOutput", "GenerateDecoderOnlyOutput"):
        setattr(generation, name, type(name, (_Output,), {}))
    generation.TextStreamer = _TextStreamer
    utils = types.ModuleType("transformers.utils")
    utils.WEIGHTS_NAME, utils.CONFIG_NAME = "pytorch_model.bin", "config.json"
    hub = types.ModuleType("transformers.utils.hub")
    hub.cached_file = _no_hub
    root.generation, root.utils, utils.hub = generation, utils, hub
    sys.modules.update({
        "transformers": root, "transformers.generation": generation,
        "transformers.utils": utils, "transformers.utils.hub": hub,
    })


def pin_autotune_configs() -> int:
    """Keep one config per autotuned mamba-ssm kernel: autotuning needs a GPU timer."""
    import mamba_ssm.ops.triton as triton_ops
    from triton.runtime.autotuner import Autotuner

    def cost(config: Any) -> int:
        product = 1
        for key, value in config.kwargs.items():
            if key.startswith("BLOCK_SIZE"):
                product *= value
        return product * (config.num_stages or 1)

    pinned = 0
    for info in pkgutil.walk_packages(triton_ops.__path__, triton_ops.__name__ + "."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # optional kernels (e.g. Mamba-3 extras) may not import here
            continue
        for value in vars(module).values():
            node = value
            while node is not None and not isinstance(node, Autotuner):
                node = getattr(node, "fn", None)
            if isinstance(node, Autotuner) and len(node.configs) > 1:
                node.configs = [min(node.configs, key=cost)]
                pinned += 1
    return pinned


def install_torch_reference_kernels() -> None:
    """Route every Triton entry point the model uses to mamba-ssm's PyTorch references."""
    import mamba_ssm.modules.mamba2 as mamba2_module
    import mamba_ssm.ops.triton.layer_norm as layer_norm
    import mamba_ssm.ops.triton.layernorm_gated as layernorm_gated
    import models.stage2.block as aim_block
    import models.stage2.mixer_seq_simple as aim_mixer
    import torch
    import torch.nn.functional as F
    from einops import rearrange
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref
    from mamba_ssm.ops.triton.ssd_combined import ssd_chunk_scan_combined_ref

    def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                   return_final_states=False, **unused: Any):
        if any(unused.get(k) is not None for k in ("seq_idx", "cu_seqlens", "initial_states")):
            raise NotImplementedError("the torch backend covers plain sequences only")
        # The reference wants whole chunks; zeros appended at the end leave the causal
        # outputs of the real positions unchanged.
        seqlen = x.shape[1]
        extra = -seqlen % chunk_size
        def pad(t):
            return F.pad(t, (0, 0) * (t.dim() - 2) + (0, extra)) if t is not None else None
        out = ssd_chunk_scan_combined_ref(pad(x), pad(dt), A, pad(B), pad(C), chunk_size, D=D, z=pad(z),
                                          dt_bias=dt_bias, dt_softplus=dt_softplus)[:, :seqlen]
        if not return_final_states:
            return out
        step = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        step = F.softplus(step) if dt_softplus else step
        nheads = x.shape[2]
        def groups_to_heads(t):
            return t.float().repeat_interleave(nheads // t.shape[2], dim=2)
        _, final = ssd_minimal_discrete(x.float() * step[..., None], A.float() * step,
                                        groups_to_heads(B), groups_to_heads(C), block_len=x.shape[1])
        return out, final

    def state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, **_: Any):
        return selective_state_update_ref(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                          dt_softplus=dt_softplus)

    def fused_add_norm(x, weight, bias, residual=None, eps=1e-6, prenorm=False,
                       residual_in_fp32=False, is_rms_norm=False, **_: Any):
        ref = layer_norm.rms_norm_ref if is_rms_norm else layer_norm.layer_norm_ref
        out = ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
        if not prenorm:
            return out
        normed, summed = out
        return normed, summed.float() if residual_in_fp32 else summed.to(x.dtype)

    def rms_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return fused_add_norm(x, self.weight, self.bias, residual=residual, eps=self.eps,
                              prenorm=prenorm, residual_in_fp32=residual_in_fp32, is_rms_norm=True)

    def gated_rms_forward(self, x, z=None):
        return layernorm_gated.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps,
                                            group_size=self.group_size,
                                            norm_before_gate=self.norm_before_gate)

    mamba2_module.mamba_chunk_scan_combined = chunk_scan
    mamba2_module.selective_state_update = state_update
    for module in (layer_norm, aim_block, aim_mixer):
        module.layer_norm_fn = fused_add_norm
    layer_norm.RMSNorm.forward = rms_forward
    layernorm_gated.RMSNorm.forward = gated_rms_forward
    del torch, rearrange


def tiny_config(n_layer: int, adaln_group: bool, num_groups: int) -> Any:
    from models.stage2.config_mamba import MambaConfig

    return MambaConfig(d_model=D_MODEL, n_layer=n_layer, vocab_size=VOCAB_SIZE,
                       num_classes=NUM_CLASSES, num_tokens=NUM_TOKENS,
                       adaln_group=adaln_group, num_groups=num_groups)


def perturbation_std(name: str) -> float:
    """Noise added to each parameter so that zero-initialised parts matter.

    The class table gets a large std so that the class signal through adaLN is visible;
    every adaLN-type parameter (zero-initialised in the original) gets a moderate one.
    """
    if "cls_embed" in name:
        return 0.5
    if any(key in name for key in ("adaLN_modulation", "adaln_group", "scale_shift_table")):
        return 0.1
    return 0.02


def build_tiny_aim(n_layer: int, adaln_group: bool, num_groups: int) -> Any:
    """The original AiM wrapper, seeded, perturbed, in eval mode, label dropout off."""
    import torch
    from models.aim import AiM

    torch.manual_seed(SEED)
    aim = AiM(tiny_config(n_layer, adaln_group, num_groups)).float().eval()
    generator = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for name, param in sorted(aim.mamba.named_parameters()):  # the tied head appears once
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(perturbation_std(name) * noise)
    # The original drops labels whenever no decoding cache is passed (train or eval), with
    # p fixed at 0.1 by LabelEmbedder's default.  p = 0 turns that branch off; the table
    # keeps its null row because its size was fixed at construction.
    aim.mamba.backbone.cls_embed.dropout_prob = 0.0
    aim.to(DEVICE)
    # The fused whole-sequence path needs the causal-conv1d CUDA extension; the unfused
    # path computes the same function with nn.Conv1d and the chunked scan.
    for layer in aim.mamba.backbone.layers:
        layer.mixer.use_mem_eff_path = False
    return aim


def fixed_tokens(batch: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(TOKEN_SEED)
    return torch.randint(VOCAB_SIZE, (batch, NUM_TOKENS), generator=generator).to(DEVICE)


def capture_head_outputs(aim: Any) -> tuple[list[Any], Callable[[], None]]:
    """Record the raw LM-head output of every call (before the original's CFG mixing)."""
    captured: list[Any] = []
    handle = aim.mamba.lm_head.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    return captured, handle.remove


def step_logits(aim: Any, tokens: Any, labels: Any, position_shift: int) -> Any:
    """Advance the original decoding path over given tokens; image token k at k + shift.

    shift 1 is the original generation convention, shift 0 the training one.
    Returns the raw head logits (rows, NUM_TOKENS, vocab); entry j predicts token j.
    """
    import torch
    from models.stage2.generation import InferenceParams

    rows = tokens.shape[0]
    cond = labels[:, None]
    params = InferenceParams(max_seqlen=NUM_TOKENS + 1, max_batch_size=rows)
    captured, remove = capture_head_outputs(aim)
    with torch.inference_mode():
        aim.mamba(cond, position_ids=None, cond=cond, inference_params=params, num_last_tokens=1)
        params.seqlen_offset += 1
        for k in range(NUM_TOKENS - 1):
            position = torch.full((rows, 1), k + position_shift, dtype=torch.long, device=DEVICE)
            aim.mamba(tokens[:, k:k + 1], position_ids=position, cond=cond,
                      inference_params=params, num_last_tokens=1)
            params.seqlen_offset += 1
    remove()
    return torch.cat(captured, dim=1)


def original_decode(aim: Any, tokens: Any, labels: Any) -> tuple[Any, Any]:
    """The original ``generate``/``decode`` loop, teacher-forced with the given tokens.

    Returns (raw head logits (rows, N, V), guided scores (rows, N, V)).
    """
    import torch

    cond = labels[:, None]
    aim.mamba.cfg_scale = CFG_SCALE
    captured, remove = capture_head_outputs(aim)
    output = aim.mamba.generate(input_ids=cond, cond=cond, max_length=NUM_TOKENS + 1,
                                teacher_outputs=torch.cat([cond, tokens], dim=1),
                                output_scores=True, return_dict_in_generate=True, cg=False)
    remove()
    if not torch.equal(output.sequences[:, 1:], tokens):
        raise RuntimeError("teacher forcing did not feed the given tokens")
    return torch.cat(captured, dim=1), torch.stack(output.scores, dim=1)


def make_tiny_fixture(name: str, out_dir: Path, backend: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file, save_model

    n_layer, adaln_group, num_groups = TINY_MODELS[name]
    aim = build_tiny_aim(n_layer, adaln_group, num_groups)
    zero_params = [n for n, p in aim.mamba.named_parameters() if not p.detach().abs().sum()]
    if zero_params:
        raise RuntimeError(f"parameters still zero after perturbation: {zero_params}")

    # Rows: the labelled half, then the same tokens under the null class (CFG layout).
    half = fixed_tokens(len(LABELS))
    tokens = torch.cat([half, half])
    labels = torch.tensor([*LABELS, NUM_CLASSES, NUM_CLASSES], device=DEVICE)

    with torch.no_grad():
        teacher, target = aim(tokens, labels)
        again, _ = aim(tokens, labels)
    if not torch.equal(target, tokens) or not torch.equal(teacher, again):
        raise RuntimeError("teacher-forced pass is not deterministic (label dropout active?)")

    decode_raw, decode_guided = original_decode(aim, tokens, labels)
    gen_raw = step_logits(aim, tokens, labels, position_shift=1)
    train_raw = step_logits(aim, tokens, labels, position_shift=0)
    cond_raw, null_raw = gen_raw.split(len(LABELS))
    guided = null_raw + (cond_raw - null_raw) * CFG_SCALE

    checks = {
        "decode_loop_equals_manual_generation_steps": float((decode_raw - gen_raw).abs().max()),
        "decode_scores_equal_cfg_of_raw_steps": float((decode_guided[:len(LABELS)] - guided).abs().max()),
        "training_position_steps_vs_teacher_forced": float((train_raw - teacher).abs().max()),
        "generation_position_steps_vs_teacher_forced_step0": float((gen_raw[:, 0] - teacher[:, 0]).abs().max()),
        "generation_position_steps_vs_teacher_forced_later": float((gen_raw[:, 1:] - teacher[:, 1:]).abs().max()),
        "null_rows_differ_from_labelled_rows": float((cond_raw - null_raw).abs().max()),
    }
    tolerance = 1e-4
    for key in ("decode_loop_equals_manual_generation_steps", "decode_scores_equal_cfg_of_raw_steps",
                "training_position_steps_vs_teacher_forced",
                "generation_position_steps_vs_teacher_forced_step0"):
        if checks[key] > tolerance:
            raise RuntimeError(f"self-check {key} failed: {checks[key]:.3g} > {tolerance}")
    for key in ("generation_position_steps_vs_teacher_forced_later", "null_rows_differ_from_labelled_rows"):
        if checks[key] < 1e-3:
            raise RuntimeError(f"self-check {key} failed: {checks[key]:.3g} is too small to test anything")

    stem = out_dir / f"aim_tiny_{name}"
    aim.to("cpu")
    holder = torch.nn.Module()
    holder.mamba = aim.mamba  # the released checkpoints wrap the backbone as `mamba.`
    save_model(holder, f"{stem}.weights.safetensors")
    io = {
        "tokens": tokens,
        "labels": labels,
        "teacher_forced_logits": teacher,
        "step_logits": gen_raw,
        "step_logits_guided": decode_guided[:len(LABELS)].contiguous(),
        "step_logits_training_positions": train_raw,
    }
    io = {k: v.cpu().contiguous() for k, v in io.items()}
    save_file(io, f"{stem}.io.safetensors")

    state = aim.mamba.state_dict()
    meta = {
        "description": f"original AiM, tiny, {f'adaLN-group G={num_groups}' if adaln_group else 'per-layer adaLN'}",
        "config": dataclasses.asdict(aim.mamba.config),
        "mamba_runtime_overrides": {"use_mem_eff_path": False, "cls_embed.dropout_prob": 0.0},
        "backend": backend,
        "seeds": {"torch.manual_seed": SEED, "perturbation": PERTURB_SEED, "tokens": TOKEN_SEED},
        "perturbation_std": {"cls_embed": 0.5, "adaLN_modulation|adaln_group|scale_shift_table": 0.1, "other": 0.02},
        "cfg_scale": CFG_SCALE,
        "rows": "rows 0..B-1 carry `labels[:B]`; rows B..2B-1 the same tokens with the null class "
                f"{NUM_CLASSES} (the original CFG batch layout)",
        "io_tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in io.items()},
        "conventions": {
            "teacher_forced_logits": "AiM.forward(tokens, labels): input [class, tokens[:-1]]; image token k "
                                     "embedded with position k; entry j predicts token j",
            "step_logits": "raw LM-head logits of the original decode path (recurrent cache); image token k "
                           "fed at step k+1 with position k+1 (the original generation convention); entry j "
                           "predicts token j; entry 0 comes from the class token alone",
            "step_logits_guided": "the original decode scores: null + (cond - null) * cfg_scale, labelled half",
            "step_logits_training_positions": "same step path with image token k at position k; equals "
                                               "teacher_forced_logits up to float error",
        },
        "checks_max_abs": checks,
        "state_dict": {f"mamba.{k}": list(v.shape) for k, v in state.items()},
        "weights_file_keys_dropped": {"mamba.lm_head.weight": "mamba.backbone.embeddings.word_embeddings.weight"},
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in (Path(f"{stem}.weights.safetensors"), Path(f"{stem}.io.safetensors"))},
    }
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    for suffix in (".weights.safetensors", ".io.safetensors"):
        os.chmod(f"{stem}{suffix}", 0o644)  # safetensors writes owner-only files
    return checks


def count_parameters(out_dir: Path) -> dict[str, Any]:
    """Exact counts of the original models, built on the meta device."""
    import torch
    from models.stage1.vq_model import VQ_models
    from models.stage2.config_mamba import MambaConfig
    from models.stage2.mixer_seq_simple import MambaLMHeadModel

    counts: dict[str, Any] = {}
    with torch.device("meta"):
        for name, kwargs in FULL_MODELS.items():
            model = MambaLMHeadModel(MambaConfig(**kwargs))
            backbone = model.backbone
            total = sum(p.numel() for p in model.parameters())  # tied head counted once
            tables = sum(t.weight.numel() for t in (backbone.embeddings.word_embeddings,
                                                    backbone.embeddings.position_embeddings,
                                                    backbone.cls_embed.embedding_table))
            counts[name] = {
                "config": kwargs,
                "params_tied_once": total,
                "params_without_word_pos_class_tables": total - tables,
                "original_get_num_params_non_embedding": total - backbone.embeddings.word_embeddings.weight.numel(),
                "state_dict_keys": len(model.state_dict()),
            }
            del model
        vq = VQ_models["VQ-f16"]()
        counts["VQ-f16 tokenizer"] = {
            "params": sum(p.numel() for p in vq.parameters()),
            "state_dict_keys": len(vq.state_dict()),
        }
    (out_dir / "aim_param_counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def compare_with(previous: Path, current: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    report = {}
    for name in TINY_MODELS:
        for part in ("weights", "io"):
            old = load_file(str(previous / f"aim_tiny_{name}.{part}.safetensors"))
            new = load_file(str(current / f"aim_tiny_{name}.{part}.safetensors"))
            if old.keys() != new.keys():
                raise RuntimeError(f"{name}.{part}: the two fixtures hold different keys")
            diffs = [float((v.double() - old[k].double()).abs().max()) for k, v in new.items()]
            report[f"{name}/{part} (largest over {len(diffs)} tensors)"] = max(diffs)
            if part == "io":
                for key, value in new.items():
                    if value.is_floating_point():
                        report[f"{name}/{key}"] = float((value - old[key]).abs().max())
    return report


def main() -> None:
    args = parse_args()
    prepare_environment(args)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    global DEVICE
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.backend == "native":
        if not torch.cuda.is_available():
            raise SystemExit("--backend native needs a CUDA device; use interpret or torch on CPU")
        DEVICE = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.backend == "interpret":
        if not torch.cuda.is_available():
            # The kernel launchers enter torch.cuda.device(x.device.index), which fails
            # for CPU tensors on a machine without CUDA.
            torch.cuda.device = lambda _index: contextlib.nullcontext()
        print(f"pinned {pin_autotune_configs()} autotuned kernels to one config")
    elif args.backend == "torch":
        install_torch_reference_kernels()
    for name in TINY_MODELS:
        print(name, json.dumps(make_tiny_fixture(name, args.out, args.backend), indent=1))
    print(json.dumps(count_parameters(args.out), indent=1))
    if args.check_against is not None:
        print("max abs difference to", args.check_against, json.dumps(compare_with(args.check_against, args.out), indent=1))


if __name__ == "__main__":
    main()
