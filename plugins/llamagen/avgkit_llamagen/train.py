"""Train a LlamaGen VQ tokenizer on a new image domain.

Loss per step (LlamaGen's VQ loss)::

    rec_w * rec(x, x_hat) + codebook_w * (codebook + commitment)
      + perceptual_w * LPIPS(x, x_hat)            # only with user-supplied LPIPS weights
      + disc_w * hinge_G(D(x_hat))                # only from step disc_start on

then, once the GAN is on, one PatchGAN step on ``disc_w * hinge_D``. AdamW, gradient
clipping, an EMA of the weights (used for the final weights), deterministic batches
(a per-epoch permutation derived from the seed) and exact resume: a run resumed from a
checkpoint computes bit-identical losses to an uninterrupted one (fp32, same device
and thread count).

Output folder::

    tokenizer.safetensors     final weights (EMA when enabled) with the config in the metadata
    reconstructions.png       originals over reconstructions
    report.json               held-out PSNR and codebook usage (when eval images are given)
    metrics.jsonl             losses every ``log_every`` steps
    checkpoints/step-XXXXXX/               trainer state for resuming (avgkit.runs.checkpoint.save_state)
"""

from __future__ import annotations

import copy
import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from avgkit.io import atomic_write_json
from avgkit.runs.layout import METRICS_FILE
from avgkit.runtime.device import resolve_device
from avgkit.runtime.progress import StepProgress
from avgkit.runtime.stop import Interrupted, StopSignals, signal_name

from .checkpoint import checkpoint_info, completed_steps, load_checkpoint, save_checkpoint
from .config import VQConfig
from .discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from .errors import VQError
from .loading import load_weights, save_weights
from .report import VQReport, reconstruction_report, save_reconstruction_grid
from .vq_model import LlamaGenVQ

WEIGHTS_NAME = "tokenizer.safetensors"


class VQTrainConfig(BaseModel):
    """Options of :func:`train_vq`; defaults follow LlamaGen's tokenizer training where it has one."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    steps: int = Field(10000, ge=1, description="optimizer steps in total (a resumed run continues to this)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine decays to min_lr_ratio * lr at `steps` (so depends on `steps`)"
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decay on conv/linear weights (LlamaGen: 0)")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 disables")
    reconstruction_loss: Literal["mse", "l1"] = "mse"
    reconstruction_weight: float = Field(1.0, ge=0.0)
    codebook_weight: float = Field(1.0, ge=0.0, description="weight of codebook + commitment losses")
    perceptual_weight: float = Field(1.0, ge=0.0, description="LPIPS weight; used only when lpips_weights is set")
    lpips_weights: str | None = Field(
        None, description="LPIPS weights file (no download); perceptual loss off when unset"
    )
    vgg_weights: str | None = Field(None, description="torchvision vgg16 weights, if the LPIPS file lacks VGG features")
    disc_start: int | None = Field(None, ge=1, description="step from which the PatchGAN loss is on; None = never")
    disc_weight: float = Field(0.5, ge=0.0)
    disc_width: int = Field(64, ge=1)
    disc_layers: int = Field(3, ge=1)
    ema_decay: float | None = Field(0.999, ge=0.0, lt=1.0, description="EMA of the weights; None disables")
    seed: int = 0
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast for the forward pass")
    threads: int | None = Field(None, ge=1, description="CPU threads for the run (torch.set_num_threads)")
    channels_last: bool = Field(True, description="NHWC memory layout (faster convolutions on CPU and GPU)")
    log_every: int = Field(50, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    grid_images: int = Field(8, ge=1, description="images in reconstructions.png")


#: Training defaults per tokenizer preset. ``digits``: 250 steps of 16 images (about 35 s
#: on one CPU core); small batches learn this domain fastest per image seen.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "steps": 250,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 20,
        "lr_schedule": "cosine",
        "ema_decay": None,
        "log_every": 25,
        "ckpt_every": 250,
    },
}


def train_preset(name: str, **overrides: Any) -> VQTrainConfig:
    """Training defaults of tokenizer preset ``name`` (LlamaGen defaults for presets without any)."""
    return VQTrainConfig(**{**TRAIN_PRESETS.get(name, {}), **overrides})


class BatchOrder:
    """Batch ``s`` is positions ``[s*B, (s+1)*B)`` of a stream of per-epoch permutations.

    Each epoch's permutation derives from ``(seed, epoch)`` only, so any step's batch can
    be recomputed after a restart without saved sampler state.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            # torch's CPU generator keeps 32 bits of a seed: mix (seed, epoch) into them
            mixed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])
            g = torch.Generator().manual_seed(mixed)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[offsets[sel]]
        return out


def learning_rate(cfg: VQTrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    lr = cfg.lr * (min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    if cfg.lr_schedule == "cosine":
        t = min(step / cfg.steps, 1.0)
        lr *= cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def ema_decay(cfg: VQTrainConfig, updates: int) -> float:
    """EMA decay after ``updates`` updates, warmed up so early averages are not dominated by the init."""
    assert cfg.ema_decay is not None
    return min(cfg.ema_decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _check_images(images: Tensor, cfg: VQConfig, what: str) -> None:
    want = (cfg.channels, *cfg.image_hw)
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise VQError(f"{what} must be a tensor (N, {want[0]}, {want[1]}, {want[2]}) in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise VQError(f"{what} must be floats in [-1, 1] (got {images.dtype}); convert with x / 127.5 - 1")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise VQError(f"{what} must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]; rescale them (e.g. x / 127.5 - 1)")


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear kernels only (not norms, biases or the codebook)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 and "embedding" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class _Run:
    """Everything one training run holds; a small object so the loop reads top to bottom."""

    def __init__(self, cfg: VQConfig, train: VQTrainConfig, device: torch.device) -> None:
        self.cfg, self.train, self.device = cfg, train, device
        torch.manual_seed(train.seed)
        self.model = LlamaGenVQ(cfg)
        if cfg.weights:  # fine-tune from existing weights
            load_weights(self.model, cfg.weights)
        self.model.to(device).train()
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if train.ema_decay is not None else None
        self.opt = torch.optim.AdamW(_decay_groups(self.model, train.weight_decay), lr=train.lr, betas=train.betas)
        self.lpips = None
        if train.lpips_weights and train.perceptual_weight > 0:
            from .perceptual import load_lpips

            self.lpips = load_lpips(train.lpips_weights, train.vgg_weights).to(device)
        self.disc = self.disc_opt = None
        if train.disc_start is not None:
            self.disc = PatchDiscriminator(cfg.channels, train.disc_width, train.disc_layers).to(device).train()
            self.disc.to(memory_format=self.memory_format)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=train.lr, betas=train.betas, weight_decay=0.0)
        self.rec_loss = F.mse_loss if train.reconstruction_loss == "mse" else F.l1_loss
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if train.precision == "bf16" else nullcontext()
        )

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.model}
        if self.ema is not None:
            mods["ema"] = self.ema
        if self.disc is not None:
            mods["disc"] = self.disc
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts: dict[str, torch.optim.Optimizer] = {"opt": self.opt}
        if self.disc_opt is not None:
            opts["disc_opt"] = self.disc_opt
        return opts

    def step(self, x: Tensor, step: int) -> dict[str, float]:
        """One optimizer step (0-based index ``step``); returns its loss terms."""
        t, lr = self.train, learning_rate(self.train, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gan_on = self.disc is not None and step + 1 >= t.disc_start  # LlamaGen counts steps from 1
        with self.autocast:
            recon, q = self.model(x)
            terms = {"rec": self.rec_loss(recon.float(), x), "codebook": q["codebook"], "commit": q["commit"]}
            loss = t.reconstruction_weight * terms["rec"] + t.codebook_weight * (terms["codebook"] + terms["commit"])
            if self.lpips is not None:
                terms["perceptual"] = self.lpips(x, recon.float()).mean()
                loss = loss + t.perceptual_weight * terms["perceptual"]
            if gan_on:
                terms["gen"] = hinge_g_loss(self.disc(recon.float()))
                loss = loss + t.disc_weight * terms["gen"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, ema_decay(t, step + 1))
        if gan_on:
            for group in self.disc_opt.param_groups:
                group["lr"] = lr
            with self.autocast:
                d_loss = t.disc_weight * hinge_d_loss(self.disc(x), self.disc(recon.detach().float()))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if t.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.disc.parameters(), t.grad_clip)
            self.disc_opt.step()
            terms["disc"] = d_loss
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"], out["lr"] = float(loss.detach()), lr
        return out

    def final_model(self) -> LlamaGenVQ:
        return (self.ema if self.ema is not None else self.model).eval()


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def train_vq(
    cfg: VQConfig,
    train: VQTrainConfig,
    images: Tensor,
    out_dir: str | Path,
    *,
    eval_images: Tensor | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train a tokenizer on ``images`` ((N, C, H, W) floats in [-1, 1]); returns the weights path.

    With ``resume`` a run continues from the newest checkpoint in ``out_dir``; without it
    an ``out_dir`` that already holds checkpoints is refused rather than overwritten.
    """
    out = Path(out_dir)
    _check_images(images, cfg, "training images")
    if eval_images is not None:
        _check_images(eval_images, cfg, "eval images")
    ckpt_dir = out / "checkpoints"
    done = completed_steps(ckpt_dir)
    if done and not resume:
        raise VQError(f"{out} already holds a training run (step {done[-1]}); pass resume=True or pick a new out_dir")
    previous_threads = torch.get_num_threads()
    if train.threads:
        torch.set_num_threads(train.threads)
    try:
        run = _Run(cfg, train, resolve_device(train.device, option="train.device"))
        start = 0
        if done:
            if checkpoint_info(ckpt_dir, done[-1])["vq_config"] != cfg.architecture():
                raise VQError(
                    f"{out} was trained with a different tokenizer architecture; use the same config or a new out_dir"
                )
            start = load_checkpoint(ckpt_dir, done[-1], run.modules(), run.optimizers())["step"]
        _loop(run, images, out, start, progress)
        final = run.final_model()
        weights = save_weights(final, out / WEIGHTS_NAME)
        save_reconstruction_grid(
            final, eval_images if eval_images is not None else images, out / "reconstructions.png", train.grid_images
        )
        if eval_images is not None:
            report = reconstruction_report(final, eval_images)
            atomic_write_json(out / "report.json", report.model_dump(), indent=1, sort_keys=True)
            if progress:
                print(f"held-out: {report.summary()}", flush=True)
        return weights
    finally:
        torch.set_num_threads(previous_threads)


def _loop(run: _Run, images: Tensor, out: Path, start: int, progress: bool) -> None:
    t = run.train
    order = BatchOrder(len(images), t.batch_size, t.seed)
    metrics_path = out / METRICS_FILE
    out.mkdir(parents=True, exist_ok=True)
    _trim_metrics(metrics_path, start)
    bar = StepProgress(t.steps, start, desc="vq", enabled=progress)
    sums: dict[str, float] = {}
    count = 0
    info = {"vq_config": run.cfg.architecture(), "train_config": t.model_dump(mode="json")}
    stop = StopSignals("saving a checkpoint after this step, then stopping")
    try:
        with metrics_path.open("a") as log, stop:
            for step in range(start, t.steps):
                x = images[order.indices(step)].to(run.device, torch.float32, non_blocking=True)
                x = x.contiguous(memory_format=run.memory_format)
                terms = run.step(x, step)
                count += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                shown = None
                if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
                    shown = {k: v / count for k, v in sums.items()}
                    shown["usage"] = run.model.codebook_usage()
                    log.write(json.dumps({"step": step + 1, **shown}) + "\n")
                    log.flush()
                    sums, count = {}, 0
                bar.update(step + 1, shown)
                if (step + 1) % t.ckpt_every == 0 or step + 1 == t.steps or stop.requested:
                    save_checkpoint(
                        out / "checkpoints", step + 1, run.modules(), run.optimizers(), info, t.keep_checkpoints
                    )
                if stop.requested and step + 1 < t.steps:
                    raise Interrupted(
                        f"stopped by {signal_name(stop.signum or 0)} at tokenizer step {step + 1} of {t.steps}; saved a "
                        f"checkpoint in {out / 'checkpoints'}; run the same command again to continue", stop.signum or 0)
    finally:
        bar.close()


def evaluate(weights: str | Path, images: Tensor) -> VQReport:
    """Held-out PSNR and codebook usage of a trained weights file."""
    from .loading import load_tokenizer

    return reconstruction_report(load_tokenizer(weights), images)
