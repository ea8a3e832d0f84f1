"""The Python API: load a trained or converted checkpoint and generate images.

    import avgkit.api as avgkit

    gen = avgkit.load("runs/aim-b")                    # latest complete checkpoint
    images = gen.generate([207, 360], n_per_class=4, cfg_scale=4.0, seed=1)   # (8, 3, 256, 256) in [-1, 1]
    pics = gen.generate("random:3", output="pil")      # PIL images
    codes = gen.sample_codes(207, n_per_class=2)       # (2, 256) token ids

Image ``i`` of a call (class by class, ``n_per_class`` each) draws its random numbers
from (``seed``, ``start_index + i``) and is conditioned on its class alone, so the batch
size, the split over processes and the order of calls do not change it: bit for bit on
the CPU; on a GPU, matrix kernels round differently for different batch shapes, so keep
the batch size fixed where bit-identical images matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor

from avgkit.errors import AvgkitError
from avgkit.runs.captions import read_captions
from avgkit.runs.loading import LoadedCheckpoint, load_checkpoint
from avgkit.runtime.device import precision_context, resolve_device
from avgkit.sample.classes import label_list, parse_classes

ClassSpec = int | str | Sequence[int] | Tensor | np.ndarray


class Generator:
    """A loaded model (tokenizer, backbone, conditioner) with the recipe's sampler settings."""

    def __init__(self, loaded: LoadedCheckpoint, device: torch.device, sampler: str | None = None) -> None:
        comps = loaded.components
        self.recipe = loaded.recipe
        self.checkpoint = loaded.ref
        self.used_ema = loaded.used_ema
        self.weights_path: Path | None = loaded.weights_path
        self.tokenizer_weights: Path | None = loaded.tokenizer_weights
        self.tokenizer = comps.tokenizer
        self.backbone = comps.backbone
        self.conditioner = comps.conditioner
        self.device = device
        #: the sampler that draws: the recipe's, unless another registered one is named
        self.sampler_name = sampler or self.recipe.sampler.name
        if sampler is not None:
            from avgkit.plugins import get_registry

            get_registry().get("sampler", sampler)  # an unknown name fails here, with "did you mean"
        # samplers by settings: a sampler may cache per-batch-size state (CUDA graphs) across calls
        self._samplers: dict[str, Any] = {}
        #: a text-conditioned run's training captions (caption id order); None for other runs
        self.captions: list[str] | None = read_captions(loaded.ref.root) if loaded.ref.kind == "run" else None

    # ------------------------------------------------------------------ facts
    @property
    def num_classes(self) -> int:
        return self.conditioner.num_classes

    @property
    def takes_text(self) -> bool:
        """Whether the model is conditioned on text (prompts), not on class ids."""
        from avgkit.data.captions import takes_captions

        return takes_captions(self.conditioner)

    @property
    def num_tokens(self) -> int:
        return self.backbone.num_tokens

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of a decoded image."""
        return (self.tokenizer.channels, *self.tokenizer.image_hw)

    @property
    def default_batch_size(self) -> int:
        return self.recipe.eval.batch_size

    # ------------------------------------------------------------------ sampler
    def sampler_config(self, **options: Any) -> BaseModel:
        """The sampler's options: the recipe's, with ``options`` (``None`` values ignored) applied.

        The sampler's own config validates them, so any registered sampler's options are
        accepted here and an unknown one is a one-line error naming the sampler. Another
        sampler than the recipe's starts from its own defaults.
        """
        from avgkit.plugins import get_registry

        ref = self.recipe.sampler
        given = {k: v for k, v in options.items() if v is not None}
        spec = get_registry().get("sampler", self.sampler_name)
        if self.sampler_name != ref.name:
            return spec.resolve(None, given)
        return spec.resolve(ref.preset, {**ref.options, **given})

    def make_sampler(self, **overrides: Any) -> Any:
        """The sampler for these settings (one instance per distinct settings, reused)."""
        from avgkit.plugins import get_registry

        cfg = self.sampler_config(**overrides)
        key = cfg.model_dump_json()
        if key not in self._samplers:
            self._samplers[key] = get_registry().get("sampler", self.sampler_name).factory(cfg)
        return self._samplers[key]

    def labels(self, classes: ClassSpec, n_per_class: int = 1, *, seed: int = 0) -> np.ndarray:
        """The label of every image of a request, class by class (see :func:`parse_classes`)."""
        if self.takes_text:
            raise AvgkitError(f"{self.recipe.name} is conditioned on text, not classes; give prompts "
                              f"(generate(prompts=[...]))")
        if isinstance(classes, (Tensor, np.ndarray)):
            classes = [int(c) for c in np.asarray(classes).reshape(-1)]
        return label_list(parse_classes(classes, self.num_classes, seed=seed), n_per_class)

    # ------------------------------------------------------------------ generation
    def iter_codes(
        self,
        labels: np.ndarray | Sequence[int],
        indices: np.ndarray | Sequence[int],
        *,
        sampler: Any,
        seed: int,
        batch_size: int,
        precision: str = "fp32",
    ) -> Iterator[tuple[slice, Tensor]]:
        """Codes for ``labels`` (image ``indices`` seed each row), ``batch_size`` rows at a time."""
        from avgkit.conditions import Conditions

        labels_t: Any = labels if isinstance(labels, Conditions) else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        index_t = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if labels_t.shape != index_t.shape:
            raise AvgkitError("labels and indices must have the same length")
        if batch_size < 1:
            raise AvgkitError(f"batch size must be at least 1 (got {batch_size})")
        for start in range(0, len(labels_t), batch_size):
            part = slice(start, min(start + batch_size, len(labels_t)))
            with torch.inference_mode(), precision_context(self.device, precision):
                codes = sampler.sample(
                    self.backbone, self.conditioner, labels_t[part].to(self.device), seed=seed,
                    index=index_t[part].to(self.device),
                )
            yield part, codes

    def decode(self, codes: Tensor, precision: str = "fp32") -> Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` on the CPU, float32."""
        with torch.inference_mode(), precision_context(self.device, precision):
            images = self.tokenizer.decode(codes.to(self.device))
        return images.float().clamp(-1, 1).cpu()

    def prompt_conditions(self, prompts: Sequence[str], n_per_prompt: int = 1) -> Any:
        """The condition batch of ``prompts`` (each ``n_per_prompt`` times, prompt by prompt)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not self.takes_text:
            raise AvgkitError(f"{self.recipe.name} is class-conditional (conditioner {self.recipe.conditioner.name!r}); "
                              f"prompts need a text-conditioned model, so give classes instead")
        if not prompts:
            raise AvgkitError("no prompts given; pass prompts=[\"forty-two\", ...]")
        return self.conditioner.tokenize([p for p in prompts for _ in range(n_per_prompt)])

    def _request_codes(
        self,
        classes: ClassSpec | None,
        n_per_class: int,
        seed: int,
        batch_size: int | None,
        start_index: int,
        precision: str,
        prompts: Sequence[str] | None = None,
        **sampler_options: Any,
    ) -> Iterator[tuple[slice, Tensor]]:
        """The batches of codes of one request: its labels class by class, image ``i`` seeded
        by index ``start_index + i``."""
        labels: Any = (self.prompt_conditions(prompts, n_per_class) if prompts is not None
                       else self.labels(classes, n_per_class, seed=seed))  # type: ignore[arg-type]
        sampler = self.make_sampler(**sampler_options)
        indices = np.arange(start_index, start_index + len(labels))
        return self.iter_codes(labels, indices, sampler=sampler, seed=seed,
                               batch_size=batch_size or self.default_batch_size, precision=precision)

    def sample_codes(
        self,
        classes: ClassSpec,
        *,
        n_per_class: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        start_index: int = 0,
        precision: str = "fp32",
        **options: Any,
    ) -> Tensor:
        """Token ids ``(N, num_tokens)`` (CPU, int64).

        ``options`` are the sampler's own (the built-in one: ``cfg_scale``, ``cfg_schedule``,
        ``temperature``, ``top_k``, ``top_p``, ``decode_width``, ``cuda_graph``, ``compile``;
        ``avgkit ls samplers --options`` lists every sampler's); ``None`` keeps the recipe's value.
        """
        batches = self._request_codes(classes, n_per_class, seed, batch_size, start_index, precision, **options)
        return torch.cat([codes.cpu() for _, codes in batches])

    def generate(
        self,
        classes: ClassSpec | None = None,
        *,
        prompts: Sequence[str] | None = None,
        n_per_class: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        start_index: int = 0,
        precision: str = "fp32",
        output: Literal["tensor", "pil", "uint8"] = "tensor",
        on_batch: Callable[[int], None] | None = None,
        **options: Any,
    ) -> Tensor | list | np.ndarray:
        """Images of ``classes`` (``n_per_class`` each, class by class), or of text ``prompts``.

        ``prompts`` (a text conditioner's run) replaces ``classes``: ``n_per_class``
        images of each prompt, prompt by prompt.

        ``output``: ``"tensor"`` (``(N, C, H, W)`` float in ``[-1, 1]``), ``"pil"`` (a list
        of PIL images) or ``"uint8"`` (``(N, H, W, 3)``, the ``samples.npz`` layout).
        ``on_batch(n)`` is called after each batch of ``n`` images. ``options`` are the
        sampler's own, as for :meth:`sample_codes`.
        """
        if output not in ("tensor", "pil", "uint8"):
            raise AvgkitError(f"output {output!r} is not one of tensor, pil, uint8")
        if (classes is None) == (prompts is None):
            raise AvgkitError("generate needs classes or prompts (one of them); e.g. generate(prompts=[\"forty-two\"])")
        batches = self._request_codes(classes, n_per_class, seed, batch_size, start_index, precision, prompts=prompts,
                                      **options)
        out = []
        for part, codes in batches:
            out.append(self.decode(codes, precision))
            if on_batch is not None:
                on_batch(part.stop - part.start)
        images = torch.cat(out)
        if output == "pil":
            from avgkit.images import to_pil

            return to_pil(images)
        if output == "uint8":
            from avgkit.images import to_uint8_hwc

            return to_uint8_hwc(images)
        return images

    def describe(self) -> dict[str, Any]:
        """What was loaded, for records such as ``sampling.json``."""
        return {**self.checkpoint.describe(), "ema": self.used_ema, "recipe": self.recipe.name,
                "weights": str(self.weights_path) if self.weights_path else None,
                "tokenizer_weights": str(self.tokenizer_weights) if self.tokenizer_weights else None}


def load(
    path: str | Path, device: str | torch.device = "auto", ema: bool | Literal["auto"] = "auto", *,
    step: int | None = None, tokenizer: str | Path | None = None, sampler: str | None = None,
) -> Generator:
    """A :class:`Generator` from a training run directory or an ``avgkit convert`` output.

    ``step`` picks a checkpoint of a run (default: the newest complete one); ``ema``
    chooses the EMA weights (``"auto"``: when present and the recipe's ``eval.use_ema``).
    Weights are safetensors only and must match the rebuilt components key for key. A
    run's tokenizer is its own copy, checked against the hash the run recorded;
    ``tokenizer`` loads another weights file instead, on purpose. ``sampler`` names another
    registered sampler than the recipe's.
    """
    dev = resolve_device(device)
    return Generator(load_checkpoint(path, device=dev, ema=ema, step=step, tokenizer=tokenizer), dev, sampler)


__all__ = ["Generator", "load"]
