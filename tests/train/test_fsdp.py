"""train.parallel: fsdp on CPU with gloo: FSDP2 against DDP, sharded checkpoints, resuming, export, launch.

The multi-process tests launch ``torchrun`` with 2 CPU ranks on tiny Mamba-2 and
transformer backbones (the plugins of this repository; skipped when they are missing).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from train_helpers import random_codes, subprocess_env, toy_model, train_cfg, write_recipe

from avgkit.errors import AvgkitError
from avgkit.runs import sharded
from avgkit.runs.layout import EMA_FILE, MODEL_FILE, SHARD_INDEX_FILE, shard_file
from avgkit.train.report import read_metrics

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ("transformer", "mamba", "adaln")


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_plugins = pytest.mark.skipif(not _have("avgkit_transformer", "avgkit_mamba", "avgkit_adaln"),
                                   reason="the transformer, mamba and adaln plugins are not installed")


def plugin_env() -> dict[str, str]:
    """Child processes with this checkout's transformer, mamba and adaln plugins, the others off."""
    from importlib import metadata

    env = subprocess_env()
    names = sorted({ep.name for ep in metadata.entry_points(group="avgkit")} - set(PLUGINS))
    env["AVGKIT_DISABLE_PLUGINS"] = ",".join(names)
    paths = [str(ROOT / "plugins" / p) for p in PLUGINS]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths, env.get("PYTHONPATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], nproc: int = 2, *, rdzv: bool = False, timeout: float = 120) -> tuple[str, float]:
    """Run ``torchrun`` with ``nproc`` CPU ranks; returns its output and seconds."""
    if rdzv:  # the multi-node launch form, on one host
        launch = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                  "--rdzv-id", "avgkit-test"]
    else:
        launch = ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc-per-node", str(nproc), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=plugin_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if proc.returncode != 0:  # the first failing rank's error, not the launcher's report
        errors = [line for line in proc.stdout.splitlines() if "Error" in line and not line.lstrip().startswith("File")]
        pytest.fail(f"torchrun exited with {proc.returncode}: {errors[:3]}\n{proc.stdout[-3000:]}")
    return proc.stdout, time.monotonic() - t0


# ----------------------------------------------------------------------------- one process
def test_fsdp_without_process_group_is_one_line(builtin_plugins, monkeypatch):
    from avgkit.plugins import get_registry
    from avgkit.runtime.distributed import setup
    from avgkit.train.data import StepBatches, TensorCodes
    from avgkit.train.loop import Trainer

    codes, labels = random_codes()
    batches = StepBatches(TensorCodes(codes, labels), batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)

    with pytest.raises(AvgkitError, match="needs a process group: launch with torchrun") as err:
        Trainer(toy_model(get_registry()), batches, train_cfg(parallel="fsdp"), progress=False)
    assert "\n" not in str(err.value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(AvgkitError, match="needs a process group"):
        setup("cpu", parallel="fsdp")


def test_fsdp_refuses_a_backbone_without_blocks(builtin_plugins):
    from avgkit.plugins import get_registry
    from avgkit.train.parallel import fsdp_blocks

    model = toy_model(get_registry())  # toy-gru: its GRUs are no block list
    with pytest.raises(AvgkitError, match="backbone ToyGRUBackbone has no block list to shard") as err:
        fsdp_blocks(model.backbone)
    assert "\n" not in str(err.value) and "train.parallel=ddp" in str(err.value)


def test_fsdp_recipe_with_unsupported_backbone_is_refused_before_writing(tmp_path, builtin_plugins, monkeypatch):
    """Through ``avgkit train``: the check runs before the run folder gets anything."""
    import torch.distributed as dist

    from avgkit.recipe import load_recipe
    from avgkit.train.pipeline import run_recipe

    recipe = write_recipe(tmp_path / "r.yaml", data={"source": "digits", "store": None},
                          train={"steps": 2, "batch_size": 8, "device": "cpu", "parallel": "fsdp"},
                          output_dir=str(tmp_path / "run"))
    port = free_port()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(AvgkitError, match="has no block list to shard"):
        run_recipe(load_recipe(str(recipe)), progress=False)
    assert not dist.is_initialized()
    assert not (tmp_path / "run").exists()


def test_sharded_files_read_back_without_a_process_group(tmp_path):
    """One rank, plain tensors: the format, tied entries, consolidation and row reads."""
    from avgkit.runtime.distributed import DistEnv

    w = torch.randn(5, 3)
    parts = {"model": {"a.weight": w, "tied.weight": w, "b": torch.arange(4.0)}}
    path = sharded.save_sharded(tmp_path, 7, env=DistEnv(), parts=parts, state={"step": 7},
                                consolidate={"model": MODEL_FILE})
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["COMPLETE", MODEL_FILE, SHARD_INDEX_FILE, shard_file(0, 1), "trainer.json"])
    index = json.loads((path / SHARD_INDEX_FILE).read_text())
    assert index["world_size"] == 1 and index["aliases"] == {"model.tied.weight": "model.a.weight"}
    with sharded.ShardReader(path) as reader:
        full = reader.full_part("model")
        assert full["tied.weight"] is full["a.weight"]
        torch.testing.assert_close(reader.rows("model.a.weight", 1, 4), w[1:4], rtol=0, atol=0)
    from avgkit.runs.checkpoint import load_tensors

    consolidated, _ = load_tensors(path / MODEL_FILE, fix="")
    assert consolidated.keys() == {"a.weight", "tied.weight", "b"}
    assert torch.equal(consolidated["tied.weight"], w)


# ----------------------------------------------------------------------------- FSDP against DDP
TRAINER_DRIVER = textwrap.dedent(
    """\
    import json, sys
    import torch
    torch.set_num_threads(1)
    from avgkit.build import ARModel
    from avgkit.plugins import get_registry
    from avgkit.recipe import TrainSection
    from avgkit.runtime.distributed import setup, teardown
    from avgkit.train.data import StepBatches, TensorCodes
    from avgkit.train.loop import Trainer
    from avgkit.train.parallel import gather_state

    out_path, precision = sys.argv[1], sys.argv[2]
    env = setup("cpu", parallel="fsdp")
    reg = get_registry()

    def model(backbone):
        spec = reg.get("backbone", backbone)
        extra = {"impl": "torch"} if backbone == "mamba2" else {}
        torch.manual_seed(0)
        bb = spec.factory(spec.resolve("tiny", {"vocab_size": 64, "num_tokens": 16, **extra}))
        cspec = reg.get("conditioner", "adaln-group")
        cond = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim,
                             num_layers=bb.num_layers)
        with torch.no_grad():  # the adaLN projections start at zero: draw them so modulation matters
            for p in cond.parameters():
                if p.abs().sum() == 0:
                    p.normal_(std=0.05)
        return ARModel(bb, cond)

    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 64, (64, 16), generator=g), torch.randint(0, 10, (64,), generator=g)
    out = {}
    for backbone in ("mamba2", "transformer"):
        for parallel in ("ddp", "fsdp"):
            cfg = TrainSection(steps=4, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=1, log_every=1,
                               precision=precision, device="cpu", parallel=parallel, ema=0.9, grad_clip=0.5)
            batches = StepBatches(TensorCodes(codes, labels, num_classes=10), batch_size=8, grad_accum=2,
                                  rank=env.rank, world_size=env.world_size, seed=0)
            trainer = Trainer(model(backbone), batches, cfg, env=env, progress=False)
            sharded = {type(p).__name__ == "DTensor" for p in trainer.model.parameters()}
            assert sharded == {parallel == "fsdp"}, (parallel, sharded)
            result = trainer.fit()
            models = trainer.sampling_models()
            if env.is_main:
                out[f"{backbone}/{parallel}"] = {
                    "loss": [r["loss"] for r in result.records],
                    "grad_norm": [r["grad_norm"] for r in result.records],
                    "weights": {name: {k: v.tolist() for k, v in m.state_dict().items()} for name, m in models},
                }
    if env.is_main:
        json.dump(out, open(out_path, "w"))
    teardown(env)
    """
)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((torch.tensor(a[k]) - torch.tensor(b[k])).abs().max()) if torch.tensor(a[k]).numel() else 0.0
               for k in a)


@needs_plugins
@pytest.mark.parametrize("precision, loss_tol, weight_tol", [("fp32", 1e-5, 1e-5), ("bf16", 2e-2, 2e-2)])
def test_fsdp_trains_like_ddp(tmp_path, precision, loss_tol, weight_tol):
    """Same losses, gradient norms (clipped), weights and EMA on 2 ranks, both backbones.

    fp32: the same sums in another order; bf16: FSDP computes with bf16 parameter copies,
    DDP under bf16 autocast, so the two round differently.
    """
    script = tmp_path / "driver.py"
    script.write_text(TRAINER_DRIVER)
    out, seconds = torchrun([str(script), str(tmp_path / "out.json"), precision])
    got = json.loads((tmp_path / "out.json").read_text())
    for backbone in ("mamba2", "transformer"):
        ddp, fsdp = got[f"{backbone}/ddp"], got[f"{backbone}/fsdp"]
        assert len(fsdp["loss"]) == 4
        assert fsdp["loss"] == pytest.approx(ddp["loss"], abs=loss_tol, rel=0), backbone
        assert fsdp["grad_norm"] == pytest.approx(ddp["grad_norm"], abs=loss_tol, rel=loss_tol), backbone
        assert fsdp["weights"].keys() == ddp["weights"].keys() == {"model", "ema"}
        for name in ("model", "ema"):
            assert _max_diff(fsdp["weights"][name], ddp["weights"][name]) < weight_tol, (backbone, name)
    print(f"fsdp vs ddp, {precision}: {seconds:.1f} s")


# ----------------------------------------------------------------------------- avgkit train under torchrun
RUN = dict(
    backbone={"name": "transformer", "preset": "tiny"},
    data={"source": "digits", "store": None},
    train={"steps": 8, "batch_size": 8, "lr": 3e-3, "log_every": 1, "ckpt_every": 4, "keep_last": 3, "ema": 0.9,
           "precision": "fp32", "device": "cpu", "parallel": "fsdp", "sample_every": 8, "sample_classes": 2,
           "sample_per_class": 2},
    eval={"samples_per_class": 1, "grid_classes": 2},
)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, Path, str, float]:
    """An FSDP run on 2 ranks, launched the multi-node way (``--nnodes 1 --rdzv-backend c10d``)."""
    if not _have("avgkit_transformer"):
        pytest.skip("the transformer plugin is not installed")
    tmp = tmp_path_factory.mktemp("fsdp")
    recipe = write_recipe(tmp / "fsdp.yaml", **RUN, output_dir=str(tmp / "run"))
    out, seconds = torchrun(["-m", "avgkit", "train", str(recipe)], rdzv=True)
    return tmp, recipe, out, seconds


def _copy_to_step(run: Path, dest: Path, step: int) -> Path:
    """A copy of ``run`` as it was when checkpoint ``step`` was its last."""
    shutil.copytree(run, dest)
    for ckpt in (dest / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    return dest


def _resume_recipe(tmp: Path, name: str, run: Path) -> Path:
    return write_recipe(tmp / f"{name}.yaml", **RUN, output_dir=str(run))


def test_fsdp_run_writes_sharded_checkpoints(fsdp_run):
    tmp, _, out, seconds = fsdp_run
    run = tmp / "run"
    assert "2 x cpu" in out
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"]
    last = run / "checkpoints" / "step-000008"
    assert sorted(p.name for p in last.iterdir()) == sorted(
        ["COMPLETE", EMA_FILE, MODEL_FILE, SHARD_INDEX_FILE, shard_file(0, 2), shard_file(1, 2), "trainer.json"])
    index = json.loads((last / SHARD_INDEX_FILE).read_text())
    assert index["world_size"] == 2 and index["files"] == [shard_file(0, 2), shard_file(1, 2)]
    blocks = [k for k in index["tensors"] if k.startswith("model.backbone.blocks.")]
    assert blocks and all(sum(index["tensors"][k]["rows"]) == index["tensors"][k]["shape"][0] for k in blocks)
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg") for k in index["tensors"])
    trainer = json.loads((last / "trainer.json").read_text())
    assert trainer["parallel"] == "fsdp" and trainer["world_size"] == 2
    # only rank 0 logged; the periodic and final sample grids were drawn from gathered weights
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 9))
    assert (run / "samples" / "step-000008.png").is_file() and (run / "samples.png").is_file()
    eval_record = json.loads((run / "eval.json").read_text())
    assert set(eval_record["by_weights"]) == {"ema", "model"}
    # the consolidated files hold the full tensors of the shards
    from avgkit.runs.checkpoint import load_tensors

    for part, filename in (("model", MODEL_FILE), ("ema", EMA_FILE)):
        consolidated, _ = load_tensors(last / filename, fix="")
        with sharded.ShardReader(last) as reader:
            full = reader.full_part(part)
        assert consolidated.keys() == full.keys()
        assert all(torch.equal(consolidated[k], full[k]) for k in full)
    print(f"fsdp run, 2 ranks, rdzv c10d: {seconds:.1f} s")


def test_fsdp_resumes_exactly_on_the_same_ranks(fsdp_run):
    tmp, _, _, _ = fsdp_run
    run = _copy_to_step(tmp / "run", tmp / "resumed-2", 4)
    _, seconds = torchrun(["-m", "avgkit", "train", str(_resume_recipe(tmp, "resumed-2", run)), "--resume"])
    whole, resumed = read_metrics(tmp / "run" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in whole]
    a, b = tmp / "run" / "checkpoints" / "step-000008", run / "checkpoints" / "step-000008"
    for name in (shard_file(0, 2), shard_file(1, 2), SHARD_INDEX_FILE, MODEL_FILE, EMA_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    print(f"resume 2 -> 2 ranks: {seconds:.1f} s")


def test_fsdp_resumes_on_one_rank(fsdp_run):
    """2 -> 1 rank: the same data order; the loss as close as reduction order allows."""
    tmp, _, _, _ = fsdp_run
    run = _copy_to_step(tmp / "run", tmp / "resumed-1", 4)
    _, seconds = torchrun(["-m", "avgkit", "train", str(_resume_recipe(tmp, "resumed-1", run)), "--resume"], nproc=1)
    whole, resumed = read_metrics(tmp / "run" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], abs=1e-5, rel=0)
    a, b = (json.loads((p / "checkpoints" / "step-000008" / "trainer.json").read_text()) for p in (tmp / "run", run))
    assert a["loader"] == b["loader"] and a["epoch"] == b["epoch"]  # the same items, in the same order
    index = json.loads((run / "checkpoints" / "step-000008" / SHARD_INDEX_FILE).read_text())
    assert index["world_size"] == 1
    print(f"resume 2 -> 1 rank: {seconds:.1f} s")


def test_fsdp_run_samples_with_avgkit_sample(fsdp_run, cli):
    """The consolidated export is the ordinary single-file format: ``avgkit sample`` reads it unchanged."""
    from avgkit import plugins
    from avgkit.api import load

    tmp, _, _, _ = fsdp_run
    plugins.reset()
    try:
        code, _, err = cli("sample", str(tmp / "run"), "--classes", "1,3", "--per-class", "2", "--device", "cpu",
                           "--quiet", "--out", str(tmp / "samples"))
        assert code == 0, err
        assert len(list((tmp / "samples" / "images").glob("*.png"))) == 4 and (tmp / "samples" / "samples.npz").is_file()
        images = load(tmp / "run", device="cpu").generate([0, 1], n_per_class=1)
        assert images.shape[0] == 2
    finally:
        plugins.reset()


def test_fsdp_checkpoint_resumes_with_ddp_on_one_process(fsdp_run):
    """A sharded checkpoint read into an unsharded model: full tensors from the shards."""
    from avgkit import plugins
    from avgkit.recipe import load_recipe
    from avgkit.train.pipeline import run_recipe

    tmp, _, _, _ = fsdp_run
    run = _copy_to_step(tmp / "run", tmp / "resumed-ddp", 4)
    recipe = write_recipe(tmp / "resumed-ddp.yaml", **{**RUN, "train": {**RUN["train"], "parallel": "ddp"}},
                          output_dir=str(run))
    plugins.reset()
    try:
        run_recipe(load_recipe(str(recipe)), resume=True, progress=False)
    finally:
        plugins.reset()
    whole, resumed = read_metrics(tmp / "run" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], abs=1e-5, rel=0)
    assert not sharded.is_sharded(run / "checkpoints" / "step-000008")  # a DDP run writes the full format
