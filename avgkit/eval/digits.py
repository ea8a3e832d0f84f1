"""Evaluation for the built-in digits domain (scikit-learn's 8x8 handwritten digits).

Inception features say little about 8x8 grey digits, so this domain has its own judges,
both trained only on the real training split of ``avgkit.data.sources`` (the held-out
"test" split stays unseen):

* :class:`DigitClassifier`: an RBF support-vector classifier on the raw 8x8 pixels
  (~99% held-out accuracy). The class accuracy of generated samples measures how well a
  class-conditional model follows its labels.
* :class:`DigitsFeatureExtractor`: a small CNN whose penultimate layer gives features
  for a "domain FID" (and logits for a digits Inception Score). Its training is
  seeded and takes seconds on a CPU; weights are cached as safetensors named by a hash
  of the training recipe. It is registered with torch-fidelity as ``avgkit-digits``.

Images of any size ``H = W = 8k`` are reduced to 8x8 by averaging ``k x k`` blocks, the
resolution the digits were drawn at.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from avgkit.eval.features import ImageFeatureExtractor
from avgkit.eval.files import AvgkitError, weights_dir
from avgkit.io import atomic_write, sha256_file

__all__ = [
    "DIGITS_ID",
    "DigitClassifier",
    "DigitsCNN",
    "DigitsFeatureExtractor",
    "digits_extractor",
    "load_digits_cnn",
    "real_digits",
    "to_digit_grid",
]

DIGITS_ID = "digits-cnn"
DIGITS_REGISTRY_NAME = "avgkit-digits"

#: Everything that decides the CNN's weights; its hash (with the training data's)
#: names the cached file.
CNN_RECIPE: dict[str, Any] = {
    "architecture": "conv16-conv32-pool-conv64-pool-fc64-fc10/v1",
    "optimizer": "adam-onecycle",
    "lr": 3e-3,
    "epochs": 15,
    "batch_size": 64,
    "shift_augmentation": 1,
    "seed": 0,
    "data": "avgkit.data.sources.load_digits_images(8, 'train')",
}


def real_digits(split: str = "train", size: int = 8) -> tuple[Tensor, Tensor]:
    """The real digits of a split as ``(N, 1, size, size)`` float in ``[-1, 1]`` and labels.

    Sizes above 8 are upsampled exactly as the training data of digits models is, so
    a reference at the samples' size shares their blur.
    """
    from avgkit.data.sources import load_digits_images

    return load_digits_images(size, split)


def to_digit_grid(images: Tensor | np.ndarray) -> Tensor:
    """Images ``(N, C, H, W)`` -> ``(N, 1, 8, 8)`` float in ``[-1, 1]`` by block averaging.

    Accepts float in ``[-1, 1]`` or uint8, one or three channels (averaged), and
    square sizes that are a multiple of 8.
    """
    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise AvgkitError(f"digit images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height != width or height % 8:
        raise AvgkitError(f"digit images must be square with a side that is a multiple of 8, got {height}x{width}")
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    x = x.mean(dim=1, keepdim=True)
    if height != 8:
        x = F.avg_pool2d(x, height // 8)
    return x.clamp(-1.0, 1.0)


def _to_pixels(images: Tensor | np.ndarray) -> np.ndarray:
    """``(N, 64)`` pixel values on the digits' own 0..16 scale."""
    grid = to_digit_grid(images)
    return ((grid + 1.0) * 8.0).reshape(grid.shape[0], 64).double().numpy()


class DigitClassifier:
    """RBF SVC on the real training digits; ``predict`` takes generated images.

    ``images`` are ``(N, 1, H, W)`` floats in ``[-1, 1]`` (uint8 and RGB also work) with
    ``H = W`` a multiple of 8.
    """

    def __init__(self, gamma: float = 1e-3, C: float = 1.0) -> None:
        from sklearn.svm import SVC

        images, labels = real_digits("train")
        self.svc = SVC(gamma=gamma, C=C).fit(_to_pixels(images), labels.numpy())

    def predict(self, images: Tensor | np.ndarray) -> np.ndarray:
        return self.svc.predict(_to_pixels(images))

    def accuracy(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
        labels = np.asarray(torch.as_tensor(labels).cpu())
        if len(labels) != len(images):
            raise AvgkitError(f"{len(images)} images but {len(labels)} labels")
        return float((self.predict(images) == labels).mean())


class DigitsCNN(nn.Module):
    """Small CNN on 8x8 digits; ``features`` is the 64-d penultimate layer."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """``grid`` ``(N, 1, 8, 8)`` in ``[-1, 1]`` -> ``(features, logits)``."""
        features = self.body(grid)
        return features, self.head(features)


def recipe_hash() -> str:
    """Hash of :data:`CNN_RECIPE` and of the training images and labels themselves."""
    images, labels = real_digits("train")
    digest = hashlib.sha256(json.dumps(CNN_RECIPE, sort_keys=True).encode())
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def _random_shift(batch: Tensor, limit: int, generator: torch.Generator) -> Tensor:
    """Move each image by up to ``limit`` pixels, filling in the background value -1."""
    n, side = batch.shape[0], batch.shape[-1]
    padded = F.pad(batch, (limit,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * limit + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * limit + 1, (n, 1, 1), generator=generator)
    span = torch.arange(side)
    rows = (dy + span[None, :, None]).expand(n, side, side)
    cols = (dx + span[None, None, :]).expand(n, side, side)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_digits_cnn() -> DigitsCNN:
    """Train :class:`DigitsCNN` on the real training split following :data:`CNN_RECIPE`."""
    # Batches of 8x8 images are too small to gain from threads, and extra threads
    # slow training down many times over on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(CNN_RECIPE)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: dict[str, Any]) -> DigitsCNN:
    generator = torch.Generator().manual_seed(recipe["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = DigitsCNN()
    images, labels = real_digits("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    steps = recipe["epochs"] * ((len(images) + recipe["batch_size"] - 1) // recipe["batch_size"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["lr"], total_steps=steps)
    model.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(images), generator=generator)
        for index in order.split(recipe["batch_size"]):
            batch = _random_shift(images[index], recipe["shift_augmentation"], generator)
            loss = F.cross_entropy(model(batch)[1], labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval().requires_grad_(False)


def load_digits_cnn(cache_dir: str | Path | None = None) -> tuple[DigitsCNN, Path]:
    """The cached CNN (trained and saved on first use) and its weights file."""
    folder = Path(cache_dir) if cache_dir is not None else weights_dir()
    path = folder / f"{DIGITS_ID}-{recipe_hash()[:16]}.safetensors"
    model = DigitsCNN()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        model = train_digits_cnn()
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"recipe": json.dumps(CNN_RECIPE)}))
    return model.eval().requires_grad_(False), path


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over :class:`DigitsCNN`: uint8 ``(B, 3, H, W)`` in.

    Provides ``"features"`` (64-d, FID/KID/PR) and ``"logits"`` (10 classes, IS).
    ``avgkit_digits_cache_dir`` overrides where the weights are cached.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str] | tuple[str, ...],
        avgkit_digits_cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, list(features_list))
        self.cnn, self.weights_path = load_digits_cnn(avgkit_digits_cache_dir)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise AvgkitError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        features, logits = self.cnn(to_digit_grid(x))
        out = {"features": features, "logits": logits}
        return tuple(out[name].float() for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


if DIGITS_REGISTRY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DIGITS_REGISTRY_NAME, DigitsFeatureExtractor)


def digits_extractor(
    *, device: str | torch.device | None = None, cache_dir: str | Path | None = None
) -> ImageFeatureExtractor:
    """The digits CNN as an :class:`ImageFeatureExtractor` for the avgkit metrics."""
    module = DigitsFeatureExtractor(DIGITS_REGISTRY_NAME, ["features", "logits"], avgkit_digits_cache_dir=cache_dir)
    return ImageFeatureExtractor(
        module,
        extractor_id=DIGITS_ID,
        weights_sha256=sha256_file(module.weights_path),
        pool_feature="features",
        logits_feature="logits",
        device=device,
    )
