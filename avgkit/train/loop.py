"""The one training loop: any backbone + conditioner on token sequences.

Per optimizer step, each rank takes its ``grad_accum`` micro-batches of codes and
labels, drops labels to the null class with the conditioner's ``drop_labels`` (one
seeded generator, drawn over the *global* batch so the result does not depend on the
number of processes), and minimises the cross-entropy of every image token under
teacher forcing. Gradients are averaged over ranks (DDP, or FSDP's reduce-scatter with
``train.parallel: fsdp``) and accumulation steps, so the update equals that of one
process holding the whole global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from avgkit.build import ARModel
from avgkit.errors import AvgkitError
from avgkit.interfaces import Sampler, Tokenizer
from avgkit.loggers import MetricLoggers
from avgkit.recipe import TrainSection
from avgkit.runs import checkpoint as ckpt
from avgkit.runs.layout import RunDir
from avgkit.runtime.device import autocast, autocast_dtype
from avgkit.runtime.distributed import DistEnv
from avgkit.runtime.stop import Interrupted, StopSignals, signal_name
from avgkit.train.data import StepBatches
from avgkit.train.optim import EMA, build_optimizer, lr_at, param_groups, set_lr
from avgkit.train.regions import compile_blocks, resolve_compile
from avgkit.train.report import MetricsLog, Progress, plot_loss
from avgkit.train.step_graph import StepGraph, resolve_cuda_graph

#: ``callback(step, record)`` after every optimizer step; ``record`` is set on logged steps.
StepCallback = Callable[[int, "dict[str, Any] | None"], None]

#: Offset that separates the label-dropout stream from other uses of ``train.seed``.
_DROPOUT_SEED_OFFSET = 0x1ABE1


@dataclass
class TrainResult:
    step: int
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.records[-1]["loss"] if self.records else None

    @property
    def final_val_loss(self) -> float | None:
        vals = [r["val_loss"] for r in self.records if "val_loss" in r]
        return vals[-1] if vals else None


@dataclass
class _Window:
    """Sums since the last logged step (always empty at a checkpoint)."""

    loss: Tensor | None = None
    grad_norm: Tensor | None = None
    steps: int = 0
    t0: float = field(default_factory=time.monotonic)

    def add(self, loss: Tensor, grad_norm: Tensor) -> None:
        self.loss = loss if self.loss is None else self.loss + loss
        self.grad_norm = grad_norm if self.grad_norm is None else self.grad_norm + grad_norm
        self.steps += 1


class Trainer:
    """Trains ``model`` on ``batches`` as the ``train`` section says.

    ``run_dir`` (rank 0 writes it) receives metrics, the loss curve, sample grids and
    checkpoints; ``None`` trains without writing anything. ``sampler``, ``tokenizer``
    and ``class_names`` are needed only for periodic sample grids (``sample_every``).
    """

    def __init__(
        self,
        model: ARModel,
        batches: StepBatches,
        cfg: TrainSection,
        *,
        env: DistEnv | None = None,
        run_dir: Path | None = None,
        sampler: Sampler | None = None,
        tokenizer: Tokenizer | None = None,
        class_names: Sequence[str] | None = None,
        progress: bool = True,
        callbacks: Sequence[StepCallback] = (),
        title: str = "",
        val_data: tuple[Tensor, Tensor] | None = None,
        loggers: MetricLoggers | None = None,
        conditions: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.env = env or DistEnv(device=next(model.parameters()).device)
        #: held-out ``(codes, labels)`` for the validation loss (every rank computes it alike)
        self.val_data = val_data
        #: caption ids -> condition batch (``avgkit.data.captions.CaptionTable``); None: labels are class ids
        self.conditions = conditions
        self.cfg = cfg
        self.model = model.to(self.env.device).train()
        self.batches = batches
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.sampler, self.tokenizer = sampler, tokenizer
        self.class_names = list(class_names) if class_names is not None else None
        self.callbacks = list(callbacks)
        self.title = title
        self.loggers = loggers  # the recipe's metric loggers (main process), besides metrics.jsonl
        self.show_progress = progress and self.env.is_main
        self.amp_dtype = autocast_dtype(cfg.precision, self.env.device)
        #: FSDP2: parameters, gradients, optimizer state and EMA sharded over the ranks
        self.sharded = cfg.parallel == "fsdp"
        self._template: torch.nn.Module | None = None
        if self.sharded:
            from avgkit.train.parallel import fsdp_blocks, plain_template, require_process_group, shard_model

            require_process_group()
            blocks = fsdp_blocks(model.backbone)
            self._template = plain_template(self.model)  # what sampling fills with gathered weights
            shard_model(self.model, blocks, self.env, self.amp_dtype)  # before the optimizer sees the parameters
        self.groups = param_groups(model)
        self.optimizer = build_optimizer(model, cfg, device=self.env.device)
        self.params = [*self.groups.decay, *self.groups.no_decay]
        self.ema: Any = None
        if cfg.ema and self.sharded:
            from avgkit.train.parallel import ShardedEMA

            self.ema = ShardedEMA(model, cfg.ema)  # every rank averages its own shards
        elif cfg.ema and self.env.is_main:
            self.ema = EMA(model, cfg.ema)
        self.dropout_gen = torch.Generator().manual_seed(cfg.seed + _DROPOUT_SEED_OFFSET)
        self.step = 0
        self.elapsed = 0.0
        self._label_group: dist.ProcessGroup | None = None
        self.ddp = None
        net: torch.nn.Module = model
        if self.env.distributed and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            self.ddp = net = DistributedDataParallel(model, device_ids=ids)
        if self.env.distributed and dist.get_backend() != "gloo":  # labels are gathered on the CPU
            self._label_group = cast("dist.ProcessGroup", dist.new_group(backend="gloo"))  # every rank joins
        #: train.compile resolved for this device: off, model or blocks
        self.compile = resolve_compile(cfg.compile, self.env.device, self.sharded, model.backbone)
        if self.compile == "blocks":  # after the EMA and the sampling template were copied: they stay eager
            compile_blocks(model.backbone)
        self.forward = torch.compile(net) if self.compile == "model" else net
        model.fused_loss = cfg.fused_loss
        # with compiled blocks the chunked loss's softmax gradient is one compiled kernel too (GPU only; measured so)
        model.compile_loss = self.compile == "blocks"
        #: train.cuda_graph resolved for this run: the step replayed from a CUDA graph, or None (eager launches)
        self.graph: StepGraph | None = None
        if resolve_cuda_graph(cfg.cuda_graph, self.env.device, distributed=self.env.distributed or self.sharded,
                              class_labels=conditions is None):
            accum = cfg.grad_accum
            self.graph = StepGraph(lambda *bufs: self._device_step(bufs[:accum], bufs[accum:], graphed=True),
                                   self.optimizer, device=self.env.device)

    # ------------------------------------------------------------------ paths
    @property
    def ckpt_root(self) -> Path | None:
        return None if self.run_dir is None else RunDir(self.run_dir).checkpoints

    @property
    def writes(self) -> bool:
        return self.run_dir is not None and self.env.is_main

    # ------------------------------------------------------------------ labels
    def _condition(self, labels: Tensor) -> Any:
        """What the conditioner takes for these labels (class ids as they are, caption ids looked up)."""
        return labels if self.conditions is None else self.conditions(labels).to(labels.device)

    def _drop_labels(self, micro_labels: list[Tensor]) -> list[Tensor]:
        """Label dropout drawn over the global batch, returned for this rank's micro-batches.

        Rank ``r``'s local item ``k`` sits at global position ``k * world + r`` (the
        loader interleaves ranks), so every process draws the same global mask.
        """
        local = torch.cat(micro_labels)
        world, rank = self.env.world_size, self.env.rank
        if world > 1:
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local, group=self._label_group)
            global_labels = torch.stack(parts, 1).flatten()
        else:
            global_labels = local
        if self.conditions is None:
            dropped = self.model.conditioner.drop_labels(global_labels, self.dropout_gen)
        else:  # caption ids: a dropped one becomes -1, the null condition
            drop = self.model.conditioner.drop_mask(len(global_labels), self.dropout_gen, global_labels.device)
            dropped = torch.where(drop, torch.full_like(global_labels, -1), global_labels)
        mine = dropped.view(-1, world)[:, rank] if world > 1 else dropped
        return list(mine.split([len(m) for m in micro_labels]))

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> dict[str, Any]:
        from avgkit import __version__

        return {
            "format": "avgkit-trainer",
            "avgkit_version": __version__,
            "step": self.step,
            "epoch": self.batches.epoch,
            "loader": self.batches.state_dict(),
            "schedule": {"name": self.cfg.schedule, "next_lr": lr_at(self.step, self.cfg)},
            "batch_size": self.cfg.batch_size,
            "world_size": self.env.world_size,
            "parallel": self.cfg.parallel,
            "elapsed": self.elapsed,
            "rng": ckpt.capture_rng({"label_dropout": self.dropout_gen}),
        }

    def _param_names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.named_parameters()}

    def _reshard(self) -> None:
        """Put FSDP's sharded parameters back in place: the root keeps its gathered ones after a
        forward without backward (validation), and names, checkpoints and the EMA refer to the shards."""
        if self.sharded:
            cast(Any, self.model).reshard()

    def save(self) -> Path | None:
        if self.sharded and self.ckpt_root is not None:  # every rank writes its shard
            from avgkit.runs import sharded
            from avgkit.runs.layout import EMA_FILE, MODEL_FILE

            self._reshard()

            opt_tensors, extra = sharded.optimizer_part(self.optimizer, self._param_names())
            parts = {"model": self.model.state_dict(keep_vars=True), "optimizer": opt_tensors}
            if self.ema is not None:
                parts["ema"] = self.ema.state_dict()
            return sharded.save_sharded(self.ckpt_root, self.step, env=self.env, parts=parts,
                                        state=self.trainer_state(), extra=extra,
                                        consolidate={"model": MODEL_FILE, "ema": EMA_FILE},
                                        keep_last=self.cfg.keep_last)
        if not self.writes:
            return None
        assert self.ckpt_root is not None
        return ckpt.save_checkpoint(
            self.ckpt_root,
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            trainer_state=self.trainer_state(),
            ema=self.ema.module if self.ema else None,
            keep_last=self.cfg.keep_last,
        )

    def resume_from(self, path: Path) -> None:
        from avgkit.runs import sharded

        if sharded.is_sharded(path):
            state = self._resume_sharded(path)
        elif self.sharded:
            raise AvgkitError(
                f"{path} is a train.parallel=ddp checkpoint; resume it with train.parallel=ddp (a sharded run "
                f"resumes from sharded checkpoints only)"
            )
        else:
            state = ckpt.load_checkpoint(
                path, model=self.model, optimizer=self.optimizer, ema=self.ema.module if self.ema else None
            )
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.batches.load_state_dict(state["loader"])
        ckpt.restore_rng(state["rng"], {"label_dropout": self.dropout_gen})

    def _resume_sharded(self, path: Path) -> dict[str, Any]:
        """Load a sharded checkpoint on any number of ranks, sharded or not (each rank reads its rows)."""
        from avgkit.runs import sharded

        fix = f"delete {path} to resume from the previous checkpoint, or start afresh without --resume"
        state = ckpt.read_trainer_state(path, fix)
        with sharded.ShardReader(path) as reader:
            live = self.model.state_dict(keep_vars=True)
            reader.load_into({f"model.{k}": t for k, t in live.items()}, self.env, what="model")
            if self.ema is not None:
                ema_state = self.ema.state_dict() if self.sharded else self.ema.module.state_dict(keep_vars=True)
                if reader.names("ema"):
                    reader.load_into({f"ema.{k}": t for k, t in ema_state.items()}, self.env, what="EMA")
                else:  # EMA switched on for a resumed run: start it from the weights
                    with torch.no_grad():
                        for k, t in ema_state.items():
                            t.copy_(live[k])
            sharded.load_optimizer(reader, self.optimizer, self._param_names(), self.env)
        return state

    def sampling_models(self) -> list[tuple[str, torch.nn.Module]] | None:
        """The current weights (``"model"``) and the EMA's (``"ema"``, when on) as plain modules.

        Under FSDP the full weights are gathered from the shards (a collective: every rank
        calls it) into fresh copies on rank 0; the other ranks get ``None``.
        """
        if not self.sharded:
            if not self.env.is_main:
                return None
            return [("model", self.model), *([("ema", self.ema.module)] if self.ema is not None else [])]
        from avgkit.train.parallel import gather_state, plain_copy

        assert self._template is not None
        self._reshard()
        sources = [("model", self.model.state_dict(keep_vars=True))]
        if self.ema is not None:
            sources.append(("ema", self.ema.state_dict()))
        out = []
        for name, state in sources:
            full = gather_state(state, self.env)
            if full is not None:
                out.append((name, plain_copy(self._template, full, self.env.device)))
        return out if self.env.is_main else None

    def _prepare_run_dir(self, resume: bool) -> Path | None:
        """Find the checkpoint to resume (every rank), tidy the run directory (rank 0)."""
        if self.run_dir is None:
            if resume:
                raise AvgkitError("--resume needs a run directory")
            return None
        assert self.ckpt_root is not None
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is not None and not resume:
            raise AvgkitError(
                f"{self.run_dir} already holds checkpoints (last: step {latest.step}); pass --resume to continue, "
                f"or set output_dir to a new folder"
            )
        if latest is None and resume:
            raise AvgkitError(
                f"--resume: {self.run_dir} holds no complete checkpoint to resume from; run without --resume to "
                f"start training"
            )
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.ckpt_root)
        return latest.path if latest is not None else None

    # ------------------------------------------------------------------ sampling
    def sample_grid(self, path: Path) -> Path | None:
        if self.sampler is None or self.tokenizer is None:
            return None
        from avgkit.images import save_labelled_grid, to_uint8_hwc
        from avgkit.sample.grids import generate_images, grid_labels

        models = self.sampling_models()  # every rank: gathering shards is collective
        if models is None:
            return None
        source = cast(ARModel, dict(models).get("ema", models[0][1]))
        cond = source.conditioner
        rows = cond.num_classes if self.conditions is None else len(self.conditions)  # type: ignore[arg-type]
        labels = grid_labels(rows, self.cfg.sample_classes, self.cfg.sample_per_class)
        images = generate_images(
            source.backbone,
            cond,
            self.sampler,
            self.tokenizer,
            self._condition(labels),
            seed=self.cfg.seed,
            batch_size=max(1, len(labels)),
            device=self.env.device,
        )
        return save_labelled_grid(
            to_uint8_hwc(images), labels.tolist(), path, title=f"step {self.step}", class_names=self.class_names
        )

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, env = self.cfg, self.env
        found = self._prepare_run_dir(resume)
        if found is not None:
            self.resume_from(found)
        run_dir = self.run_dir if self.writes else None
        metrics = MetricsLog(RunDir(run_dir).metrics) if run_dir is not None else None
        if metrics is not None and found is not None:
            metrics.truncate_after(self.step)  # drop records written after the checkpoint
        elif metrics is not None:
            metrics.reset()
        progress = Progress(cfg.steps, self.step, enabled=self.show_progress)
        if found is not None:
            progress.write(f"resumed from {found} (step {self.step})")
        progress.write(self.groups.summary())
        records: list[dict[str, Any]] = []
        tokens_per_step = cfg.batch_size * self.model.backbone.num_tokens
        window = _Window()
        last_ckpt: Path | None = found
        t_start = time.monotonic()
        elapsed0 = self.elapsed
        stop = StopSignals("saving a checkpoint after this step, then stopping")
        try:
            with stop:
                while self.step < cfg.steps:
                    loss, grad_norm = self._train_step()
                    self.step += 1
                    self.elapsed = elapsed0 + time.monotonic() - t_start
                    if self.ema is not None:
                        self.ema.update(self.model, self.step - 1)
                    window.add(loss, grad_norm)
                    stopping = stop.agreed(env, self._label_group)  # every rank stops at the same step
                    last = self.step == cfg.steps
                    is_ckpt = self.step % cfg.ckpt_every == 0 or last or stopping is not None
                    is_val = self.val_data is not None and (
                        self.step % (cfg.val_every or cfg.ckpt_every) == 0 or last or stopping is not None
                    )
                    record = None
                    if self.step % cfg.log_every == 0 or is_ckpt or is_val:
                        record = self._log(window, tokens_per_step)
                        if is_val:
                            record["val_loss"] = self.validation_loss()
                        window = _Window()
                        records.append(record)
                        if metrics is not None:
                            metrics.append(record)
                        if self.loggers:
                            self.loggers.log_metrics(self.step, record, prefix="train/")
                    if is_ckpt:
                        saved = self.save()
                        last_ckpt = saved or last_ckpt
                        if run_dir is not None and metrics is not None:
                            plot_loss(metrics.read(), RunDir(run_dir).loss_plot, self.title)
                    if stopping is not None:
                        if env.distributed:
                            from avgkit.runtime.distributed import barrier

                            barrier(env)  # the checkpoint is written before any rank leaves
                        where = f"; saved {last_ckpt}" if last_ckpt is not None and self.writes else ""
                        raise Interrupted(
                            f"stopped by {signal_name(stopping)} at step {self.step} of {cfg.steps}{where}; "
                            f"continue with the same command and --resume",
                            stopping,
                        )
                    if cfg.sample_every and (self.step % cfg.sample_every == 0 or last) and self.run_dir is not None:
                        grid = self.sample_grid(RunDir(self.run_dir).step_samples(self.step))
                        if grid is not None:
                            progress.write(f"samples: {grid}")
                            if self.loggers:
                                self.loggers.log_images(self.step, {"samples": grid})
                    progress.update(self.step, record)
                    for callback in self.callbacks:
                        callback(self.step, record)
        finally:
            progress.close()
        if env.distributed:
            from avgkit.runtime.distributed import barrier

            barrier(env)
        return TrainResult(self.step, records, last_ckpt, self.elapsed)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean cross-entropy per token on the held-out codes (true labels, no dropout, no RNG use)."""
        assert self.val_data is not None
        codes, labels = self.val_data
        model, was_training = self.model, self.model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.env.device)
        try:
            for start in range(0, len(codes), self.cfg.batch_size):
                c = codes[start : start + self.cfg.batch_size].to(self.env.device)
                lab = self._condition(labels[start : start + self.cfg.batch_size].to(self.env.device))
                with autocast(self.env.device, self.amp_dtype):
                    logits = model(c, lab)
                total += F.cross_entropy(logits.float().flatten(0, 1), c.flatten(), reduction="sum").double()
        finally:
            model.train(was_training)
            self._reshard()
        return float(total) / max(1, codes.numel())

    def _train_step(self) -> tuple[Tensor, Tensor]:
        micro = self.batches.next_step()
        labels = self._drop_labels([m.labels for m in micro])
        set_lr(self.optimizer, lr_at(self.step, self.cfg))
        if self.graph is not None:  # the buffers are filled from these, then the step replays
            loss, grad_norm = self.graph(*(m.codes for m in micro), *labels)
            return loss, grad_norm
        device = self.env.device
        codes = [m.codes.to(device, non_blocking=True) for m in micro]
        conds = [self._condition(lab.to(device, non_blocking=True)) for lab in labels]
        loss, grad_norm = self._device_step(codes, conds)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def _device_step(self, codes: Sequence[Tensor], conds: Sequence[Any], graphed: bool = False) -> tuple[Tensor, Tensor]:
        """The micro-batches' forwards and backwards, clipping and the update: no host read of a tensor, so that
        a CUDA graph can record it (``graphed``: autocast's cast cache off, the casts recorded instead)."""
        accum = len(codes)
        total = torch.zeros((), device=self.env.device)
        for i, (c, lab) in enumerate(zip(codes, conds, strict=True)):
            if self.sharded:  # gradients are reduced after the last micro-batch only, as under DDP
                cast(Any, self.model).set_requires_gradient_sync(i == accum - 1)
            with contextlib.nullcontext() if self.ddp is None or i == accum - 1 else self.ddp.no_sync():
                with autocast(self.env.device, self.amp_dtype, cache=not graphed):
                    loss = self.forward(c, lab, loss=True)  # fp32 cross-entropy, logits by chunks
                (loss / accum).backward()
            total += loss.detach()
        clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        # the global norm: with sharded (DTensor) gradients each rank's partial norms are combined
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.sharded:
            from avgkit.train.parallel import full_value

            grad_norm = full_value(grad_norm)
        self.optimizer.step()
        return total / accum, grad_norm.detach()

    def _log(self, window: _Window, tokens_per_step: int) -> dict[str, Any]:
        from avgkit.runtime.distributed import all_reduce_mean

        assert window.loss is not None and window.grad_norm is not None  # a window is logged after add()
        loss = all_reduce_mean(window.loss.detach().clone(), self.env) / window.steps
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise AvgkitError(
                f"the training loss became {loss_value} at step {self.step}; lower train.lr, keep train.grad_clip "
                f"set, or use train.precision=fp32, then restart from the last checkpoint with --resume"
            )
        seconds = max(time.monotonic() - window.t0, 1e-9)
        return {
            "step": self.step,
            "loss": loss_value,
            "lr": lr_at(self.step - 1, self.cfg),
            "grad_norm": float(window.grad_norm) / window.steps,
            "tokens_per_s": tokens_per_step * window.steps / seconds,
            "elapsed": round(self.elapsed, 3),
            "epoch": self.batches.epoch,
        }
