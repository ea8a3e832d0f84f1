#!/usr/bin/env bash
# Every GPU measurement in one device call (one lease: the machine starts once).
#   run it from the repository root on the GPU machine, with wheels for what the machine
#   lacks in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection; for the
#   full run also zarr, numcodecs, donfig, google-crc32c, torch-fidelity, and mamba-ssm
#   built offline) and LlamaGen's public code where LLAMAGEN_ROOT points (default
#   .ref/llamagen-ce98ec4; docs/benchmarks.md says how to get it):
#   bash benchmarks/run_gpu.sh [--quick | --baseline | --decode | --diagnose | --training | --recheck | --graph | --graph-loss | --graph-confirm | --conv | --split | --preconv | --defer | --chunked | --ncu-window | --pdl | --b256 | --int8 | --confirm | --linear | --core | --precision | --tune | --persistent | --compiled | --draw | --fused-in-proj | --fused-rule | --idle | --words | --window]
# --quick (at most 8 minutes on one H100 or H200; BUDGET seconds, default 500): the scan's
# repeat check, the reproducibility matrix (AiM-B, GPT-B), where identical runs differ for
# AiM-B with its bf16 and int8 states, GPT-B against LlamaGen and AiM-B at batch 16/64/256,
# AiM-B's state and step-kernel variants with a per-kernel profile.
# --baseline (about 6 minutes): GPT-L against LlamaGen at batch 16 and 256, then pytest -m gpu.
# --decode (about 9 minutes): the decode kernels against PyTorch (bf16 and int8 states, the
# chunked form), the state-update tile sweep (gpu_check --tiles, timed in CUDA graphs), AiM-B's
# variants (bf16 / int8 state, recurrent / chunked form) and their profiles beside GPT-B.
# --diagnose (about 9 minutes; BUDGET seconds, default 565): where identical GPU runs differ: the scan's repeat check
# (bf16, fp32), the reproducibility diagnosis stage by stage (AiM-B on both paths, GPT-B with each attention), then
# AiM-B's and GPT-B's sampling rows (TORCH_DET=1 adds the diagnosis under torch's deterministic mode).
# --training (one call, about 10 minutes): AiM-B and AiM-L eager and with compiled blocks against
# the AiM authors' trainer step (their code where AIM_ROOT points, default .ref/aim-0a91c60)
# and the mamba-ssm stack, the compiled AiM-B step by kernel, AiM-1B at batch 64 with every
# second block checkpointed, and the digits precision check.
# --recheck (about 10 minutes; BUDGET seconds, default 560): AiM-B with compiled blocks, with and
# without the compiled loss kernel, beside the AiM authors' trainer step; the scan's dCB kernel
# with and without its head split; AiM-B's decode variants beside GPT-B at batch 16 and 64 with
# per-kernel profiles; AiM-B's cold and warm start; AiM-L beside the reference.
# --graph (about 9 minutes; BUDGET seconds, default 560): train.cuda_graph's GPU tests, AiM-B and AiM-L with compiled
# blocks, with and without the step replayed from a CUDA graph, beside the AiM authors' trainer step, the compiled
# AiM-L step by kernel, then AiM-1B (every second block checkpointed) with and without the graph.
# --graph-loss (about 8 minutes): AiM-B and AiM-L compiled blocks, with the compiled loss kernel, and with both the
# loss kernel and the graph, beside the reference; then the digits precision check with the graph.
# --graph-confirm (about 9 minutes): the digits precision check (today's path, the bf16 path with compiled blocks and
# the graph), then AiM-L and AiM-XL decoding beside the compiled GPT-L at batch 16 and 64.
# --conv (about 10 minutes; BUDGET seconds, default 560): the conv kernels' and the graph's GPU tests, AiM-B and AiM-L
# with the conv's Triton kernels against the PyTorch conv, beside the reference, AiM-B's step by kernel, then the
# digits precision check of the default path
# (CONV_SCAN=1 adds the scan with the dCB kernel's two loop orders; CONV_LIMIT sets the training rows' seconds,
# CONV_VARIANTS their variants).
# --split (about 8 minutes; BUDGET seconds, default 500): the decode kernels against PyTorch (gpu_check --decode;
# SPLIT_CHECK=0 skips them), the decode state update's work splits over 24 layers'
# states (gpu_check --tiles), then GPT-B and AiM-B at batch 16 and 64 with the rule's split, the fastest swept one
# and those SPLITS names (default 64x8; sampling.py --step-splits), timed interleaved, with per-kernel profiles.
# --linear (about 4 minutes): the state update's counters under Nsight Compute where the machine has it (ncu), the
# decode kernels against PyTorch (gpu_check --decode), then AiM-B's decode projections alone (decode_linear.py:
# cuBLAS, cuBLASLt and Triton tiles against the weights' floor).
# --preconv (about 9 minutes; BUDGET seconds, default 560): the decode kernels against PyTorch with the conv in its own
# launch too, GPT-B and AiM-B at batch 16 and 64 with the rule and SPLITS (default 32x8:pc,16x8:pc,64x8:pc), timed
# interleaved with per-kernel profiles, then the decode projections alone (decode_linear.py, LINEAR_ROWS).
# --defer (about 8 minutes; BUDGET seconds, default 480): the decode kernels against PyTorch (the norm deferred to the
# block boundary included), GPT-B and AiM-B at batch 16 and 64 with the rule and SPLITS (default: the rule before the
# norm was deferred, 32x8:pc and 64x8:pc, and the int8 rule capped at 64 registers), timed interleaved with per-kernel
# profiles, AiM-B's cold and warm start, then AiM-L and AiM-XL beside GPT-L in what time is left.
# --chunked (about 7 minutes; BUDGET seconds, default 420): the decode kernels against PyTorch (the chunked form's
# backbone decode included), then GPT-B and AiM-B at batch 16 and 64, the recurrent and chunked forms with bf16 and
# int8 states, the chunked form also with SPLITS (default 16x8,64x8:r80), timed interleaved with per-kernel profiles.
# --ncu-window (about 3 minutes): Nsight Compute's counters (throughput, occupancy, warp stalls) of the recurrent
# state update (bf16) and the chunked form's kernel (bf16, int8) at 128 sequences, 24 layers (gpu_check --step-only).
# --pdl (about 4 minutes; BUDGET seconds, default 230): the decode kernels against PyTorch with programmatic
# dependent launch (AVGKIT_TRITON_PDL=1), then GPT-B and AiM-B's bf16 and int8 states at batch 16 and 64, each with
# and without it, timed interleaved.
# --b256 (about 3 minutes; BUDGET seconds, default 170): GPT-B and AiM-B at batch 256, the recurrent and chunked
# forms with bf16 and int8 states, timed interleaved.
# --int8 (about 8 minutes; BUDGET seconds, default 470): the decode kernels against PyTorch, Nsight Compute's counters
# of the recurrent state update with bf16 and int8 states (where ncu is; NCU=0 skips them), the state update's work
# splits over 24 layers' states (TILE_SPLITS; both states), then GPT-B and AiM-B at BATCHES (default 16,64), AiM-B's
# states at VARIANTS (default 16,64) with the rule and SPLITS (default 64x4:pc:dn,32x4:pc:dn:r64,64x4:pc:dn:r96; empty:
# the rule alone), timed interleaved with per-kernel profiles.
# --confirm (about 9 minutes; BUDGET seconds, default 560): the decode rule's tables: GPT-B and AiM-B (the recipe's
# default state) at batch 16, 64 and 256, AiM-B's state dtypes with the rule and SPLITS (default 64x4:pc:dn) at 16
# and 64 with per-kernel profiles, AiM-B's cold and warm start, the decode kernels against PyTorch, the
# reproducibility matrix of AiM-B's default, then AiM-L and AiM-XL beside GPT-L in what time is left.
# --core (about 6 minutes; CORE_LIMIT seconds for the training rows, default 380): the one-op mixer core's and the
# conv's GPU tests (CORE_TESTS=0 skips them), then AiM-B and AiM-L with the core against its three ops and with the
# norms recomputed (CORE_VARIANTS), beside the reference, and AiM-B's step by kernel.
# --precision (about 5 minutes): the digits precision check, today's path and the default bf16 path, three seeds each.
# --tune (about 6 minutes): the dCB kernel's tile and head split (ssd_scan.py --dcb-sweep, DCB_SWEEP) and the gated
# norm's backward settings (gated_norm.py), then AiM-B (TUNE_PRESETS) with the default and with the fastest of each
# sweep (KNOBS overrides the choice) beside the reference, which runs first (TUNE_SWEEPS=0: no sweeps;
# TUNE_REFERENCE=--no-reference: no reference rows).
# --persistent (about 3 minutes; BUDGET seconds, default 300): a decoding step's launches against one persistent kernel
# with grid-wide barriers (persistent_layers.py at ROWS, default 32,128: AiM-B's 24 layers of projections, with and
# without a one-byte state streamed between them, as launches from a CUDA graph and as one launch).
# --compiled (about 4 minutes; BUDGET seconds, default 240): AiM-B's default through torch.compile: the
# reproducibility matrix of its compiled path with and without the paper's filters, then GPT-B and AiM-B at batch 16
# and 64 with AiM-B's step also compiled (sampling.py --aim-compile), timed interleaved.
# --draw (about 9 minutes; BUDGET seconds, default 560): the sampler's draw as one Triton kernel: its GPU tests, GPT-B
# and AiM-B at batch 16 and 64 with AiM-B's draw also by PyTorch ops (draw_impl: torch), timed interleaved, then the
# reproducibility matrix of AiM-B's default on the PATHS (default graph,eager,compiled) with and without the filters.
# --fused-in-proj (about 9 minutes; PARTS=checks or rows for one half; BUDGET seconds, default 560): the decode kernels
# against PyTorch (step_kernel fused-in-proj included), in_proj with the conv in its epilogue against cuBLAS and the
# conv's launch (decode_linear.py --parts conv, PROJ_TILES), then GPT-B and AiM-B at batch 16 and 64 with the bf16 and
# int8 states, two-launch and fused-in-proj, timed interleaved with per-kernel profiles (PROFILE= for none).
# --fused-rule (about 5 minutes; BUDGET seconds, default 540): step_kernel auto (the default: fused-in-proj at 32 rows
# or fewer): the decode kernels against PyTorch (CHECKS=0 skips them), AiM-B's reproducibility matrix with it at decode
# width 16 (32 rows: the fused path) on PATHS (default graph,compiled), then GPT-B and AiM-B's variants (two-launch,
# fused-in-proj and auto) at batch 16 and 64, with per-kernel profiles of each and of GPT-B (PROFILE= for none).
# --idle (about 2 minutes; BUDGET seconds, default 150): where a step idles: GPT-B and AiM-B's default at BATCHES
# (default 16) with per-kernel profiles and the GPU's idle time between kernels by the pair it falls between.
# --words (about 7 minutes; BUDGET seconds, default 480): the int8 rule, its state read and written as words
# (StepTile.words), against the same split bytewise (BYTES, default 32x4:pc:dn:r64): the decode kernels against
# PyTorch (both; CHECKS=0 skips them), AiM-B's reproducibility matrix at decode widths WIDTHS (default 16 32) on PATHS
# (default graph), Nsight Compute's counters of both state updates where the machine has ncu (NCU=0 skips them), both
# over 24 layers' states (gpu_check --tiles, TILE_SPLITS), then GPT-B and AiM-B at BATCHES (default 16,64), AiM-B's
# rows with the rule and BYTES, timed interleaved, with per-kernel profiles and the idle time between kernels, and
# AiM-B's default beside the class token through the scan (backbone.PREFILL_BY_STEP off).
# --window (about 7 minutes; BUDGET seconds, default 520): the chunked form's kernels (the window's bookkeeping in the
# conv's launch, the state read as words, the fold in its own launch): the decode kernels against PyTorch (CHECKS=0
# skips them), then GPT-B and AiM-B at BATCHES (default 16,64): the recipe's default, the recurrent and chunked forms
# with bf16 and int8 states and the chunked form split by WINDOW_SPLITS (default 64x4,32x2), timed interleaved,
# with per-kernel profiles (PROFILE= for none); AiM-B's reproducibility matrix in the chunked form at decode widths
# WIDTHS (default 16 32) on PATHS (default graph); the same rows without splits at batch LARGE (default 256; LARGE=
# for none).
# Without any of these, everything at every size (several calls' worth).
# Results land in $OUT (or benchmarks/results/) as JSON named after the card
# (..._h100.json, ..._h200.json); commit them with the scripts.
set -uo pipefail
QUICK=${1:-}
case "$QUICK" in
  -h|--help) sed -n '2,/^set -uo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
esac
if [ -n "$QUICK" ] && ! grep -q -F -- "if [ \"\$QUICK\" = \"$QUICK\" ]" "$0"; then
  echo "run_gpu.sh: unknown mode $QUICK; see bash benchmarks/run_gpu.sh --help" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null || { echo "run_gpu.sh runs on a machine with an NVIDIA GPU (no nvidia-smi here)" >&2; exit 2; }
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | grep -o -i -E 'h100|h200|a100|l40s|l4|b200' \
  | head -n1 | tr '[:upper:]' '[:lower:]')
CARD=${CARD:-gpu}
LLAMAGEN_ROOT=${LLAMAGEN_ROOT:-.ref/llamagen-ce98ec4}
AIM_ROOT=${AIM_ROOT:-.ref/aim-0a91c60}
MAMBA_ROOT=${MAMBA_ROOT:-.ref/mamba-2.3.2}  # mamba-ssm's Python sources (its Triton kernels), when not installed
[ -f "$AIM_ROOT/models/aim.py" ] || { echo "no AiM checkout at $AIM_ROOT: its rows are skipped"; AIM_ROOT=; }
AR=${AIM_ROOT:+--aim-root $AIM_ROOT}
[ -d "$LLAMAGEN_ROOT/autoregressive" ] || { echo "no LlamaGen checkout at $LLAMAGEN_ROOT: its rows are skipped"; LLAMAGEN_ROOT=; }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if [ -d "$MAMBA_ROOT/mamba_ssm" ] && ! python3 -c "import mamba_ssm" >/dev/null 2>&1; then
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(realpath "$MAMBA_ROOT")"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/mamba -e plugins/adaln \
  -e plugins/llamagen -e plugins/transformer -e plugins/text
nvidia-smi -L
START=$SECONDS
run() { echo "== [$((SECONDS - START)) s] $*"; timeout "${LIMIT:-480}" python3 "$@" 2>&1 | grep -v -i -E 'warn|deprecat'; }
gpu_tests() {  # the test suite's GPU-marked tests (reproducibility at AiM-B size, CUDA eval, ...), or those of the
  # paths given
  echo "== [$((SECONDS - START)) s] pytest -m gpu ${*:-tests plugins}"
  timeout "${LIMIT:-480}" python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors -rs \
    ${*:-tests plugins} 2>&1 | tail -n 45
}
ncu_step() {  # Nsight Compute's counters of the kernels matching $2 (two launches, after the compile calls) in a
  # process running gpu_check.py with the remaining arguments: the report into $1, its key lines printed
  local report=$1 kernel=$2
  shift 2
  timeout "${NCU_LIMIT:-60}" ncu --clock-control none -k "regex:$kernel" --launch-skip 48 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \
    python3 plugins/mamba/scripts/gpu_check.py "$@" > "$report" 2>&1
  grep -E "Duration|Throughput|Registers|Occupancy|Stall|Warp Cycles|Eligible|Issued|Executed|L2 Hit|Block Limit|Waves" \
    "$report" | head -n 60
}
LG=${LLAMAGEN_ROOT:+--llamagen-root $LLAMAGEN_ROOT}
if [ "$QUICK" = "--quick" ]; then
  LIMIT=30 run plugins/mamba/scripts/gpu_check.py --repeat-only --dtypes bfloat16 --out "$OUT/scan_repeat_$CARD.json"
  LIMIT=190 run benchmarks/reproducibility.py --parts matrix --models aim-b,gpt-b \
    --out "$OUT/reproducibility_matrix_$CARD.json"
  LIMIT=50 run benchmarks/reproducibility.py --parts diagnose --models aim-b,aim-b/bf16 \
    --out "$OUT/reproducibility_diagnose_$CARD.json"
  LIMIT=$((${BUDGET:-500} - SECONDS + START)) run benchmarks/sampling.py $LG --transformers gpt-b --aim aim-b \
    --batches 16,64,256 --variants 64 --profile --out "$OUT/sampling_quick_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--baseline" ]; then  # the rest of the transformer baseline, then the GPU-marked tests (about 6 minutes)
  LIMIT=200 run benchmarks/sampling.py $LG --transformers gpt-l --aim none --batches 16,256 \
    --out "$OUT/sampling_gpt_l_16_256_$CARD.json"
  LIMIT=$((${BUDGET:-420} - SECONDS + START)) gpu_tests
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--decode" ]; then  # AiM decoding work: kernels against PyTorch (int8 included), the tile sweep, rows
  LIMIT=200 run plugins/mamba/scripts/gpu_check.py --quick --dtypes bfloat16 --out "$OUT/mamba_gpu_check_quick_$CARD.json"
  LIMIT=100 run plugins/mamba/scripts/gpu_check.py --tiles --out "$OUT/decode_tiles_$CARD.json"
  LIMIT=$((${BUDGET:-540} - SECONDS + START)) run benchmarks/sampling.py $LG --transformers gpt-b --aim aim-b \
    --batches 16,64 --variants 16,64 --chunked --profile --out "$OUT/sampling_decode_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--diagnose" ]; then  # where identical GPU runs differ, stage by stage, then the sampling rows
  LIMIT=60 run plugins/mamba/scripts/gpu_check.py --repeat-only --dtypes bfloat16,float32 \
    --out "$OUT/scan_repeat_$CARD.json"
  LIMIT=170 run benchmarks/reproducibility.py --parts diagnose --models aim-b,aim-b/torch,gpt-b,gpt-b/sdpa \
    --out "$OUT/reproducibility_diagnose_$CARD.json"
  LIMIT=45 run benchmarks/sampling.py --transformers none --aim aim-b --variants none \
    --out "$OUT/sampling_aim_$CARD.json"
  LIMIT=$((${BUDGET:-565} - SECONDS + START)) run benchmarks/sampling.py $LG --transformers gpt-b --aim none \
    --out "$OUT/sampling_gpt_$CARD.json"
  [ -n "${TORCH_DET:-}" ] && LIMIT=80 run benchmarks/reproducibility.py --parts diagnose --models aim-b,gpt-b/sdpa \
    --torch-deterministic --out "$OUT/reproducibility_diagnose_torchdet_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--recheck" ]; then  # the parts in order of need; each has its own time limit
  LIMIT=200 run benchmarks/train_step.py --presets aim-b --variants compile-blocks,compile-blocks-loss --no-stack \
    --window-steps 4 $AR --out "$OUT/train_step_recheck_b_$CARD.json"
  LIMIT=30 run benchmarks/ssd_scan.py --impls triton,triton-dcb-split --out "$OUT/ssd_scan_dcb_$CARD.json"
  LIMIT=170 run benchmarks/sampling.py --transformers gpt-b --aim aim-b --batches 16,64 --variants 16,64 --profile \
    --out "$OUT/sampling_recheck_$CARD.json"
  LIMIT=50 run benchmarks/startup.py --out "$OUT/startup_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/train_step.py --presets aim-l --variants compile-blocks \
    --no-stack --window-steps 4 $AR --out "$OUT/train_step_recheck_l_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--graph" ]; then  # the training step replayed from a CUDA graph (train.cuda_graph), in order of need
  echo "== [$((SECONDS - START)) s] pytest test_mamba_step_graph.py"
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rs plugins/mamba/tests/test_mamba_step_graph.py 2>&1 | tail -n 15
  LIMIT=330 run benchmarks/train_step.py --presets aim-b,aim-l --variants compile-blocks,compile-blocks-graph,compile-blocks-loss \
    --no-stack --window-steps 4 $AR --profile "$OUT/train_step_profile_aim_l_compiled_$CARD" --profile-preset aim-l \
    --profile-variant compile-blocks --out "$OUT/train_step_graph_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/train_step.py --presets aim-1b \
    --variants ckpt2-compile-blocks-graph,ckpt2-compile-blocks --no-reference --window-steps 2 \
    --out "$OUT/train_step_1b_graph_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--graph-loss" ]; then  # the compiled loss kernel with and without the graph beside the reference
  LIMIT=300 run benchmarks/train_step.py --presets aim-b,aim-l \
    --variants compile-blocks,compile-blocks-loss,compile-blocks-loss-graph --no-stack --window-steps 4 $AR \
    --out "$OUT/train_step_loss_graph_$CARD.json"
  LIMIT=$((${BUDGET:-540} - SECONDS + START)) run benchmarks/precision_check.py --paths today,bf16 \
    --work /tmp/precision --out "$OUT/precision_check_graph_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--linear" ]; then  # the decode kernels' GPU checks, then the decode step's projections alone
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1)
  if [ -n "$NCU" ]; then  # the state update's counters: occupancy, stalls, memory throughput (skips the compile calls)
    for st in bf16 int8; do
      echo "== [$((SECONDS - START)) s] ncu, $st state"
      timeout "${NCU_LIMIT:-100}" "$NCU" -k regex:_step_kernel --launch-skip 48 --launch-count 2 --section SpeedOfLight \
        --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        python3 plugins/mamba/scripts/gpu_check.py --step-only $st > "$OUT/ncu_step_${st}_$CARD.txt" 2>&1
      tail -n 60 "$OUT/ncu_step_${st}_$CARD.txt"
    done
  else
    echo "no ncu on this machine"
  fi
  LIMIT=${CHECK_LIMIT:-150} run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=${LINEAR_LIMIT:-240} run benchmarks/decode_linear.py --rows "${LINEAR_ROWS:-32,128,512}" --out "$OUT/decode_linear_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--preconv" ]; then  # the conv in its own launch (StepTile.preconv): checks, rows, projections
  LIMIT=${CHECK_LIMIT:-110} run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=${ROWS_LIMIT:-330} run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --step-splits "${SPLITS:-32x8:pc,16x8:pc,64x8:pc}" --profile --out "$OUT/sampling_preconv_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/decode_linear.py --rows "${LINEAR_ROWS:-32,128}" \
    --out "$OUT/decode_linear_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--defer" ]; then  # the norm deferred to the block boundary: checks, AiM-B rows, start-up, AiM-L / XL
  LIMIT=${CHECK_LIMIT:-80} run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=${ROWS_LIMIT:-260} run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --step-splits "${SPLITS:-32x8:pc,64x8:pc,64x8:pc:dn:r64}" --profile --out "$OUT/sampling_defer_$CARD.json"
  LIMIT=55 run benchmarks/startup.py --out "$OUT/startup_$CARD.json"
  LIMIT=$((${BUDGET:-480} - SECONDS + START)) run benchmarks/sampling.py --transformers gpt-l --aim aim-l,aim-xl \
    --batches 16,64 --variants none --out "$OUT/sampling_l_xl_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--chunked" ]; then  # the chunked form with the rule's launches: checks, AiM-B rows and profiles
  LIMIT=${CHECK_LIMIT:-80} run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=$((${BUDGET:-420} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --chunked --step-splits "${SPLITS:-16x8,64x8:r80}" --split-forms chunked --profile \
    --out "$OUT/sampling_chunked_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--ncu-window" ]; then  # the chunked form's kernel beside the recurrent one under Nsight Compute
  for spec in "recurrent bf16 _step_kernel" "chunked bf16 _window_step_kernel" "chunked int8 _window_step_kernel"; do
    set -- $spec
    echo "== [$((SECONDS - START)) s] ncu, $1 form, $2 state"
    NCU_LIMIT=${NCU_LIMIT:-100} ncu_step "$OUT/ncu_${1}_${2}_$CARD.txt" "$3" --step-only "$2" --step-form "$1"
  done
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--pdl" ]; then  # the decode kernels by programmatic dependent launch: checks, then AiM-B's rows
  (export AVGKIT_TRITON_PDL=1; LIMIT=${CHECK_LIMIT:-80} run plugins/mamba/scripts/gpu_check.py --decode \
    --out "$OUT/mamba_gpu_check_decode_pdl_$CARD.json")
  LIMIT=$((${BUDGET:-230} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --pdl --out "$OUT/sampling_pdl_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--persistent" ]; then  # launches against one persistent kernel with grid barriers
  LIMIT=${BUDGET:-300} run benchmarks/persistent_layers.py --rows "${ROWS:-32,128}" \
    --out "$OUT/persistent_layers_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--draw" ]; then  # the sampler's draw as one Triton kernel: GPU tests, rows, reproducibility
  LIMIT=120 gpu_tests tests/core/test_draw_triton.py tests/core/test_sampler.py
  LIMIT=${ROWS_LIMIT:-200} run benchmarks/sampling.py --quick --batches 16,64 --variants none --torch-draw \
    --out "$OUT/sampling_draw_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/reproducibility.py --parts matrix --models aim-b \
    --paths "${PATHS:-graph,eager,compiled}" --out "$OUT/reproducibility_matrix_draw_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--fused-in-proj" ]; then  # in_proj with the conv in its epilogue: PARTS=checks (decode checks and
  # the projection alone), rows (sampler rows and profiles beside GPT-B), or both (the default)
  if [[ ",${PARTS:-checks,rows}," == *,checks,* ]]; then
    LIMIT=${CHECK_LIMIT:-120} run plugins/mamba/scripts/gpu_check.py --decode \
      --out "$OUT/mamba_gpu_check_decode_fused_in_proj_$CARD.json"
    LIMIT=${LINEAR_LIMIT:-150} run benchmarks/decode_linear.py --parts conv --rows 32,128 \
      --configs "${CONFIGS:-0x16x128x4x4,0x32x128x4x4}" \
      --proj-tiles "${PROJ_TILES:-0x16x128x4x4:late,0x16x64x4x4,0x32x128x4x4,64x32x128x3x4:late,64x32x128x3x8,128x16x128x3x8}" \
      --out "$OUT/decode_linear_fused_in_proj_$CARD.json"
  fi
  if [[ ",${PARTS:-checks,rows}," == *,rows,* ]]; then
    LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
      --fused-in-proj ${PROFILE---profile} --out "$OUT/sampling_fused_in_proj_$CARD.json"
  fi
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--idle" ]; then  # the idle time between a step's kernels, GPT-B beside AiM-B
  LIMIT=$((${BUDGET:-150} - SECONDS + START)) run benchmarks/sampling.py --quick --batches "${BATCHES:-16}" \
    --variants none --profile --out "$OUT/sampling_idle_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--words" ]; then  # the int8 rule (words) against bytewise: checks, reproducibility, counters, rows
  [ "${CHECKS:-1}" = 0 ] || LIMIT=${CHECK_LIMIT:-150} run plugins/mamba/scripts/gpu_check.py --decode \
    --out "$OUT/mamba_gpu_check_decode_words_$CARD.json"
  for width in ${WIDTHS-16 32}; do  # 32 and 64 rows: the fused in_proj's path and the two-launch one
    LIMIT=${REPRO_LIMIT:-90} run benchmarks/reproducibility.py --parts matrix --models aim-b/auto --decode-width "$width" \
      --paths "${PATHS:-graph}" --out "$OUT/reproducibility_matrix_words_w${width}_$CARD.json"
  done
  if [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then
    for split in rule "${BYTES:-32x4:pc:dn:r64}"; do
      echo "== [$((SECONDS - START)) s] ncu, int8 state, $split"
      ncu_step "$OUT/ncu_step_int8_${split//:/-}_$CARD.txt" _step_kernel --step-only int8 \
        $([ "$split" = rule ] || echo --step-split "$split")
    done
  fi
  LIMIT=${TILES_LIMIT:-100} run plugins/mamba/scripts/gpu_check.py --tiles --tile-states int8 \
    --tile-splits "${TILE_SPLITS:-${BYTES:-32x4:pc:dn:r64},32x4:pc:dn:r64:w,32x4:pc:dn:w}" \
    --out "$OUT/decode_tiles_words_$CARD.json"
  LIMIT=$((${BUDGET:-480} - SECONDS + START)) run benchmarks/sampling.py --quick --batches "${BATCHES:-16,64}" \
    --variants "${BATCHES:-16,64}" --step-splits "${BYTES:-32x4:pc:dn:r64}" --split-forms recurrent --profile \
    --prefill-scan --out "$OUT/sampling_words_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--window" ]; then  # the chunked form's kernels: checks, then rows beside the recurrent form and GPT-B
  [ "${CHECKS:-1}" = 0 ] || LIMIT=${CHECK_LIMIT:-150} run plugins/mamba/scripts/gpu_check.py --decode \
    --out "$OUT/mamba_gpu_check_decode_window_$CARD.json"
  LIMIT=$((${BUDGET:-520} - 150 - SECONDS + START)) run benchmarks/sampling.py --quick --batches "${BATCHES:-16,64}" \
    --variants "${BATCHES:-16,64}" --chunked --step-splits "${WINDOW_SPLITS-64x4,32x2}" --split-forms chunked \
    ${PROFILE---profile} --out "$OUT/sampling_window_$CARD.json"
  for width in ${WIDTHS-16 32}; do  # 32 and 64 rows
    LIMIT=${REPRO_LIMIT:-90} run benchmarks/reproducibility.py --parts matrix --models aim-b/chunked \
      --decode-width "$width" --paths "${PATHS:-graph}" --out "$OUT/reproducibility_matrix_window_w${width}_$CARD.json"
  done
  [ -z "${LARGE-256}" ] || LIMIT=$((${BUDGET:-520} - SECONDS + START)) run benchmarks/sampling.py --quick \
    --batches "${LARGE-256}" --variants "${LARGE-256}" --chunked --out "$OUT/sampling_window_b${LARGE-256}_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--fused-rule" ]; then  # step_kernel auto (fused-in-proj at 32 rows or fewer), the default
  [ "${CHECKS:-1}" = 0 ] || LIMIT=${CHECK_LIMIT:-120} run plugins/mamba/scripts/gpu_check.py --decode \
    --out "$OUT/mamba_gpu_check_decode_fused_rule_$CARD.json"
  LIMIT=${REPRO_LIMIT:-150} run benchmarks/reproducibility.py --parts matrix --models aim-b/auto --decode-width 16 \
    --paths "${PATHS:-graph,compiled}" --out "$OUT/reproducibility_matrix_auto_$CARD.json"
  LIMIT=$((${BUDGET:-540} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --fused-in-proj ${PROFILE---profile} --out "$OUT/sampling_fused_rule_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--compiled" ]; then  # AiM-B's default through torch.compile: reproducibility, then its rows
  LIMIT=${REPRO_LIMIT:-110} run benchmarks/reproducibility.py --parts matrix --models aim-b --paths compiled \
    --out "$OUT/reproducibility_matrix_compiled_$CARD.json"
  LIMIT=$((${BUDGET:-240} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants none \
    --aim-compile --out "$OUT/sampling_compiled_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--b256" ]; then  # the largest batch of the table: GPT-B and AiM-B's forms and states at 256
  LIMIT=${BUDGET:-170} run benchmarks/sampling.py --quick --batches 256 --variants 256 --chunked \
    --out "$OUT/sampling_b256_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--int8" ]; then  # the one-byte state's update: checks, counters, splits, AiM-B rows
  LIMIT=${CHECK_LIMIT:-80} run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  if [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then
    for st in bf16 int8; do
      echo "== [$((SECONDS - START)) s] ncu, recurrent form, $st state"
      ncu_step "$OUT/ncu_step_${st}_$CARD.txt" _step_kernel --step-only "$st"
    done
  fi
  LIMIT=${TILES_LIMIT:-120} run plugins/mamba/scripts/gpu_check.py --tiles \
    --tile-splits "${TILE_SPLITS:-32x8:pc:r48,64x8:pc,64x4:pc,64x4:pc:r96,32x4:pc,32x4:pc:r64,32x2:pc}" --out "$OUT/decode_tiles_int8_$CARD.json"
  LIMIT=$((${BUDGET:-470} - SECONDS + START)) run benchmarks/sampling.py --quick --batches "${BATCHES:-16,64}" \
    --variants "${VARIANTS:-16,64}" --step-splits "${SPLITS-64x4:pc:dn,32x4:pc:dn:r64,64x4:pc:dn:r96}" \
    --split-forms recurrent --profile --out "$OUT/sampling_int8_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--confirm" ]; then  # the decode rule's tables, in order of need: AiM-B, start-up, checks, AiM-L / XL
  LIMIT=${ROWS_LIMIT:-240} run benchmarks/sampling.py --transformers gpt-b --aim aim-b --batches 16,64,256 \
    --variants 16,64 --step-splits "${SPLITS:-64x4:pc:dn}" --split-forms recurrent --profile \
    --out "$OUT/sampling_confirm_$CARD.json"
  LIMIT=55 run benchmarks/startup.py --out "$OUT/startup_$CARD.json"
  LIMIT=40 run plugins/mamba/scripts/gpu_check.py --decode --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=${REPRO_LIMIT:-90} run benchmarks/reproducibility.py --parts matrix --models aim-b \
    --out "$OUT/reproducibility_matrix_aim_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/sampling.py --transformers gpt-l --aim aim-l,aim-xl \
    --batches 16,64 --out "$OUT/sampling_l_xl_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--split" ]; then  # the state update's work splits over 24 layers, then AiM-B with the fastest
  [ "${SPLIT_CHECK:-1}" = 1 ] && LIMIT=120 run plugins/mamba/scripts/gpu_check.py --decode \
    --out "$OUT/mamba_gpu_check_decode_$CARD.json"
  LIMIT=200 run plugins/mamba/scripts/gpu_check.py --tiles --out "$OUT/decode_tiles_stream_$CARD.json"
  LIMIT=$((${BUDGET:-500} - SECONDS + START)) run benchmarks/sampling.py --quick --batches 16,64 --variants 16,64 \
    --step-tiles "$OUT/decode_tiles_stream_$CARD.json" --step-splits "${SPLITS:-64x8}" --profile \
    --out "$OUT/sampling_split_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--core" ]; then  # the mixer's conv, scan and gated norm as one op against three, beside the reference
  if [ "${CORE_TESTS:-1}" = 1 ]; then
    echo "== [$((SECONDS - START)) s] pytest -m gpu (core, conv)"
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rs plugins/mamba/tests/test_mamba_core.py \
      plugins/mamba/tests/test_mamba_conv.py 2>&1 | tail -n 15
  fi
  LIMIT=${CORE_LIMIT:-380} run benchmarks/train_step.py --presets aim-b,aim-l \
    --variants ${CORE_VARIANTS:-compile-blocks-loss-graph-threeops,compile-blocks-loss,compile-blocks-loss-graph,compile-blocks-loss-graph-recompute} \
    --no-stack --window-steps 4 $AR --profile "$OUT/train_step_profile_aim_b_core_$CARD" --profile-preset aim-b \
    --profile-variant compile-blocks-loss --out "$OUT/train_step_core_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--tune" ]; then  # the dCB kernel's tile and split, the gated norm's backward settings, then training
  if [ "${TUNE_TESTS:-1}" = 1 ]; then
    echo "== [$((SECONDS - START)) s] pytest -m gpu (core)"
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rs -k "${TUNE_TESTS_K:-}" \
      plugins/mamba/tests/test_mamba_core.py 2>&1 | tail -n 8
  fi
  if [ "${TUNE_SWEEPS:-1}" = 1 ]; then
    LIMIT=120 run benchmarks/ssd_scan.py --impls triton --dcb-sweep "${DCB_SWEEP:-64x1,64x2,64x4,32x1,32x2,32x4,128x2,128x4,128x8}" \
      --out "$OUT/ssd_scan_dcb_sweep_$CARD.json"
    LIMIT=90 run benchmarks/gated_norm.py --out "$OUT/gated_norm_$CARD.json"
  fi
  # the fastest of each sweep whose results match the first setting's (bf16 outputs: within a rounding)
  KNOBS=${KNOBS:-$(python3 - "$OUT/ssd_scan_dcb_sweep_$CARD.json" "$OUT/gated_norm_$CARD.json" <<'PY'
import json, sys
knobs = []
try:
    sweep = json.load(open(sys.argv[1]))["results"]["dcb_sweep"]
    ok = {k: v for k, v in sweep.items() if v.get("max_rel_diff", 1) < 2e-2}
    tile, split = min(ok, key=lambda k: ok[k]["fwd_bwd_ms"]).split("x")
    knobs += [f"triton_ssd.DCB_BLOCK={tile}", f"triton_ssd.DCB_HEAD_SPLIT={split}"]
except Exception as err:
    print(f"no dCB choice: {err}", file=sys.stderr)
try:
    norm = json.load(open(sys.argv[2]))["results"]
    common = set.intersection(*(set(v) for v in norm.values()))
    ok = [e for e in common if all(v[e]["max_rel_diff"] < 2e-2 for v in norm.values())]
    rows, tile, warps = min(ok, key=lambda e: sum(v[e]["ms"] for v in norm.values())).split("x")
    knobs += [f"triton_gated_norm.ROWS={rows}", f"triton_gated_norm.ROW_TILE={tile}",
              f"triton_gated_norm.BWD_WARPS={warps if warps != '0' else 'none'}"]
except Exception as err:
    print(f"no gated-norm choice: {err}", file=sys.stderr)
print(",".join(knobs))
PY
)}
  echo "== knobs: $KNOBS"
  LIMIT=${TUNE_LIMIT:-380} run benchmarks/train_step.py --presets "${TUNE_PRESETS:-aim-b}" ${TUNE_REFERENCE:---reference-first} \
    --variants ${TUNE_VARIANTS:-compile-blocks-loss-graph,compile-blocks-loss-graph-knobs} --knobs "$KNOBS" \
    --no-stack --window-steps 4 $AR --out "$OUT/train_step_tune_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--precision" ]; then  # the digits recipe's final loss, three seeds of each path
  LIMIT=$((${BUDGET:-540} - SECONDS + START)) run benchmarks/precision_check.py --paths today,bf16 \
    --work /tmp/precision --out "$OUT/precision_check_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--conv" ]; then  # the conv's Triton kernels and the dCB loop order, then precision
  echo "== [$((SECONDS - START)) s] pytest -m gpu (conv, graph)"
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rs plugins/mamba/tests/test_mamba_conv.py \
    ${CONV_GRAPH_TESTS:-plugins/mamba/tests/test_mamba_step_graph.py} 2>&1 | tail -n 15
  [ -n "${CONV_SCAN:-}" ] && for nh in 24 32; do
    LIMIT=60 run benchmarks/ssd_scan.py --nheads $nh --impls triton,triton-dcb-pblocks \
      --out "$OUT/ssd_scan_dcb_order_h${nh}_$CARD.json"
  done
  LIMIT=${CONV_LIMIT:-240} run benchmarks/train_step.py --presets aim-b,aim-l \
    --variants ${CONV_VARIANTS:-compile-blocks-loss-graph-torchconv,${CONV_MID:-compile-blocks-loss,}compile-blocks-loss-graph} --no-stack \
    --window-steps 4 $AR --profile "$OUT/train_step_profile_aim_b_conv_$CARD" --profile-preset aim-b \
    --profile-variant ${CONV_PROFILE:-compile-blocks-loss} --out "$OUT/train_step_conv_$CARD.json"
  [ -n "${CONV_ONLY:-}" ] && exit 0
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/precision_check.py --paths today,bf16 \
    --work /tmp/precision --out "$OUT/precision_check_conv_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--graph-confirm" ]; then  # after --graph: digits precision with the graph, AiM-L and AiM-XL decoding
  LIMIT=280 run benchmarks/precision_check.py --paths today,bf16 --work /tmp/precision \
    --out "$OUT/precision_check_graph_$CARD.json"
  LIMIT=$((${BUDGET:-540} - SECONDS + START)) run benchmarks/sampling.py --transformers gpt-l --aim aim-l,aim-xl \
    --batches 16,64 --out "$OUT/sampling_l_xl_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
if [ "$QUICK" = "--training" ]; then  # the parts in order of need; each has its own time limit
  LIMIT=380 run benchmarks/train_step.py --presets aim-b,aim-l --variants chunked,compile-blocks,compile-blocks-conv1d \
    --window-steps 4 $AR --profile "$OUT/train_step_profile_aim_b_compiled_$CARD" --profile-variant compile-blocks \
    --out "$OUT/train_step_$CARD.json"
  LIMIT=90 run benchmarks/train_step.py --presets aim-1b --variants ckpt2-compile-blocks,ckpt2 --no-reference \
    --window-steps 2 --warmup-steps 1 --out "$OUT/train_step_1b_$CARD.json"
  LIMIT=$((${BUDGET:-560} - SECONDS + START)) run benchmarks/precision_check.py --paths today,bf16 \
    --work /tmp/precision --out "$OUT/precision_check_$CARD.json"
  echo "== done in $((SECONDS - START)) s"
  exit 0
fi
kernels_and_sampling() {
  run plugins/mamba/scripts/gpu_check.py --out "$OUT/mamba_gpu_check_$CARD.json"
  run benchmarks/reproducibility.py --out "$OUT/reproducibility_$CARD.json"
  run benchmarks/sampling.py $LG --out "$OUT/sampling_$CARD.json"
  run benchmarks/sampling.py $LG --filters paper --batches 64 --aim aim-b --transformers gpt-b \
    --out "$OUT/sampling_paper_filters_$CARD.json"
  gpu_tests
}
training_and_startup() {
  run benchmarks/train_step.py --presets aim-b,aim-l,aim-xl,aim-1b $AR --profile "$OUT/train_step_profile_aim_b_$CARD" \
    --out "$OUT/train_step_$CARD.json"
  run benchmarks/vq_encode.py --out "$OUT/vq_encode_$CARD.json"
  run benchmarks/startup.py --out "$OUT/startup_$CARD.json"
  [ -n "${WITH_SCAN:-}" ] && run benchmarks/ssd_scan.py --out "$OUT/ssd_scan_$CARD.json"
}
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  CUDA_VISIBLE_DEVICES=0 kernels_and_sampling >"$OUT/gpu_run_a.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 training_and_startup >"$OUT/gpu_run_b.log" 2>&1
  wait
  timeout 240 bash benchmarks/ddp_check.sh 150 >"$OUT/ddp.log" 2>&1
  tail -n 60 "$OUT/gpu_run_a.log" "$OUT/gpu_run_b.log" "$OUT/ddp.log"
else
  { kernels_and_sampling; training_and_startup; } 2>&1 | tee "$OUT/gpu_run.log"
fi
