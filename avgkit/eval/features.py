"""Image features for the metrics: torch-fidelity's ``inception-v3-compat`` network.

The Inception port of torch-fidelity (TensorFlow-exact resize and layers) gives the
2048-d pool features used by FID and precision/recall, and the 1008 logits (without the
bias, as the original Inception Score code) used by IS.

avgkit never downloads weights while evaluating. The weights file is taken from an
explicit path or from the weights folder (``$AVGKIT_HOME/weights``), its SHA-256 is
checked, and it is read with ``torch.load(weights_only=True)``: no pickled code runs.
torch-fidelity's own loader would download when given no path and unpickle freely when
given one, so :class:`InceptionV3Compat` hands its parent a placeholder instead and
loads the verified tensors itself.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from avgkit.eval.files import AvgkitError, weights_dir
from avgkit.eval.images import ImageSet, open_images
from avgkit.io import sha256_file
from avgkit.runtime.device import resolve_device

__all__ = [
    "INCEPTION_ID",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_SHA256",
    "FeatureSet",
    "ImageFeatureExtractor",
    "InceptionV3Compat",
    "find_inception_weights",
    "inception_extractor",
    "load_inception_state_dict",
    "resolve_device",
    "state_dict_sha256",
]

#: torch-fidelity's name for the extractor; also the id recorded in reports.
INCEPTION_ID = "inception-v3-compat"
#: Name under which :class:`InceptionV3Compat` is registered with torch-fidelity.
INCEPTION_REGISTRY_NAME = "avgkit-inception-v3-compat"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
#: SHA-256 of torch-fidelity's release file. torch-fidelity publishes its first eight
#: digits in the file name (torch.hub's naming convention); a test checks they agree.
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3

# Key of the placeholder state dict given to torch-fidelity's constructor.
_DEFERRED = "__avgkit_weights_loaded_separately__"


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The verified Inception weights file: ``path``, or the one in the weights folder."""
    candidate = Path(path).expanduser() if path is not None else weights_dir() / INCEPTION_WEIGHTS_FILE
    if not candidate.is_file():
        raise AvgkitError(
            f"Inception weights not found at {candidate}: download {INCEPTION_WEIGHTS_FILE} "
            f"(SHA-256 {INCEPTION_WEIGHTS_SHA256}) from {INCEPTION_WEIGHTS_URL} and put it in "
            f"{weights_dir()}/ (or set AVGKIT_HOME, or pass its path)"
        )
    digest = sha256_file(candidate)
    if digest != INCEPTION_WEIGHTS_SHA256:
        raise AvgkitError(
            f"{candidate} has SHA-256 {digest}, expected {INCEPTION_WEIGHTS_SHA256}: "
            f"replace it with torch-fidelity's {INCEPTION_WEIGHTS_FILE}"
        )
    return candidate


def load_inception_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """Verified Inception tensors, loaded without unpickling code."""
    return torch.load(find_inception_weights(path), map_location="cpu", weights_only=True)


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """Hash of a state dict's names, dtypes, shapes and values (independent of file format)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _randomize_(module: nn.Module, seed: int) -> None:
    """Seeded random weights that keep activations at unit scale through ~100 layers.

    PyTorch's default init shrinks activations at every layer (features ~1e-8 at the
    pool), which would make any distance between feature sets vanish. Used for tests
    and for smoke runs where no weights are at hand.
    """
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            fan_in = sub.in_channels * sub.kernel_size[0] * sub.kernel_size[1]
            with torch.no_grad():
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        elif isinstance(sub, nn.Linear):
            with torch.no_grad():
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * sub.in_features**-0.5)
                sub.bias.zero_()


class InceptionV3Compat(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception, constructed without any download or unpickling.

    Accepts torch-fidelity's constructor arguments, so it can be registered with
    torch-fidelity (name ``avgkit-inception-v3-compat``) and used by
    ``torch_fidelity.calculate_metrics``. Weights come from
    ``feature_extractor_weights_path`` or the weights folder; with
    ``avgkit_random_init_seed`` the network is instead randomly initialised
    (deterministically), which needs no file at all.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str] | tuple[str, ...],
        feature_extractor_weights_path: str | Path | None = None,
        feature_extractor_internal_dtype: str | None = None,
        avgkit_random_init_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        placeholder = io.BytesIO()
        torch.save({_DEFERRED: torch.zeros(0)}, placeholder)
        placeholder.seek(0)
        super().__init__(
            name,
            list(features_list),
            feature_extractor_weights_path=placeholder,
            feature_extractor_internal_dtype=feature_extractor_internal_dtype,
            **kwargs,
        )
        if avgkit_random_init_seed is not None:
            _randomize_(self, int(avgkit_random_init_seed))
        else:
            super().load_state_dict(load_inception_state_dict(feature_extractor_weights_path))
        self.requires_grad_(False)
        self.eval()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        if _DEFERRED in state_dict:  # the placeholder from __init__: weights follow separately
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


if INCEPTION_REGISTRY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(INCEPTION_REGISTRY_NAME, InceptionV3Compat)


@dataclass
class FeatureSet:
    """Features of one image set: ``pool`` (N, D) for FID/PR, ``logits`` (N, K) for IS."""

    pool: np.ndarray
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.pool.shape[0])


class ImageFeatureExtractor:
    """A torch-fidelity feature extractor plus what a report must record about it.

    ``module`` takes uint8 ``(B, 3, H, W)`` and returns a tuple in the order of its
    ``features_list``; ``pool_feature`` / ``logits_feature`` name the entries used for
    distances and for IS. ``extractor_id`` and ``weights_sha256`` identify the network;
    ``cache_key`` names cached reference statistics computed with it.
    """

    def __init__(
        self,
        module: FeatureExtractorBase,
        *,
        extractor_id: str,
        weights_sha256: str,
        pool_feature: str,
        logits_feature: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.module = module
        self.extractor_id = extractor_id
        self.weights_sha256 = weights_sha256
        self.pool_feature = pool_feature
        self.logits_feature = logits_feature
        self.device = resolve_device(device)
        self.module.to(self.device)

    @property
    def cache_key(self) -> str:
        return f"{self.extractor_id}-{self.weights_sha256[:16]}"

    @property
    def evaluator(self) -> str:
        """``avgkit <version> / torch-fidelity <version> <extractor id>``."""
        return f"avgkit {_avgkit_version()} / torch-fidelity {torch_fidelity.__version__} {self.extractor_id}"

    def describe(self) -> dict[str, str]:
        return {"id": self.extractor_id, "weights_sha256": self.weights_sha256, "evaluator": self.evaluator}

    @torch.no_grad()
    def extract(
        self,
        images: str | Path | Tensor | np.ndarray | ImageSet,
        *,
        batch_size: int = 64,
        progress: bool = True,
        description: str = "features",
    ) -> FeatureSet:
        """Features of every image of a folder, ``.npz``, or ``(N, C, H, W)`` tensor."""
        image_set = open_images(images)
        names = list(self.module.features_list)
        pools: list[Tensor] = []
        logits: list[Tensor] = []
        with _progress(progress, description, len(image_set)) as advance:
            for batch in image_set.batches(batch_size):
                outputs = dict(zip(names, self.module(batch.to(self.device, non_blocking=True)), strict=True))
                pools.append(outputs[self.pool_feature].float().cpu())
                if self.logits_feature is not None:
                    logits.append(outputs[self.logits_feature].float().cpu())
                advance(batch.shape[0])
        return FeatureSet(
            pool=torch.cat(pools).numpy(),
            logits=torch.cat(logits).numpy() if logits else None,
        )


def inception_extractor(
    weights_path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    random_init_seed: int | None = None,
) -> ImageFeatureExtractor:
    """torch-fidelity's Inception with verified weights (or seeded random weights).

    Pool features are the 2048-d ``"2048"`` output, IS logits the ``"logits_unbiased"``
    output, as torch-fidelity uses them for FID/PR and IS.
    """
    module = InceptionV3Compat(
        INCEPTION_REGISTRY_NAME,
        ["2048", "logits_unbiased"],
        feature_extractor_weights_path=weights_path,
        avgkit_random_init_seed=random_init_seed,
    )
    if random_init_seed is None:
        extractor_id, digest = INCEPTION_ID, INCEPTION_WEIGHTS_SHA256
    else:
        extractor_id, digest = f"{INCEPTION_ID}-random{random_init_seed}", state_dict_sha256(module.state_dict())
    return ImageFeatureExtractor(
        module,
        extractor_id=extractor_id,
        weights_sha256=digest,
        pool_feature="2048",
        logits_feature="logits_unbiased",
        device=device,
    )


def _avgkit_version() -> str:
    try:
        from avgkit import __version__

        return __version__
    except ImportError:  # pragma: no cover - only when the core package is incomplete
        return "unknown"


class _progress:
    """Minimal progress line on stderr (a rich bar when stderr is a terminal)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self.done = 0
        self._bar = None

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self.advance

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, advance=count)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self.enabled and exc[0] is None:
            print(f"{self.description}: {self.done} images", file=sys.stderr)
