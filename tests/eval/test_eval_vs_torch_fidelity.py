"""avgkit's metrics against ``torch_fidelity.calculate_metrics`` on identical features.

No Inception weights are available to tests, so both sides use the same seeded random
Inception, built through torch-fidelity's registry on its side and directly on ours.
On the CPU it looks at 75x75 (Inception's smallest input) instead of 299x299 to stay
fast; the resize, the network and the metric code are otherwise the real ones. Where a
GPU is present the same comparison runs on it at the real 299x299.
"""

from __future__ import annotations

import pytest
import torch
import torch_fidelity
from eval_helpers import Uint8Images
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from avgkit.eval import ImageFeatureExtractor, compute_metrics
from avgkit.eval.features import InceptionV3Compat

SMALL_NAME = "avgkit-test-small-random-inception"
FULL_NAME = "avgkit-test-random-inception"
SEED = 0


class RandomInception(InceptionV3Compat):
    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list, avgkit_random_init_seed=SEED)
        with torch.no_grad():  # sharper class scores, so that IS is not trivially 1
            self.fc.weight.mul_(20.0)


class SmallRandomInception(RandomInception):
    INPUT_IMAGE_SIZE = 75


for _name, _cls in ((SMALL_NAME, SmallRandomInception), (FULL_NAME, RandomInception)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(_name, _cls)


def blobs(n: int, background: float, seed: int) -> torch.Tensor:
    """``n`` 64x64 images in [-1, 1]: a coloured disc on a flat background, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    centre = torch.rand(n, 2, 1, 1, generator=g) * 1.2 - 0.6
    radius = torch.rand(n, 1, 1, 1, generator=g) * 0.4 + 0.2
    dist = ((xx - centre[:, :1]) ** 2 + (yy - centre[:, 1:]) ** 2).sqrt()
    image = torch.where(dist < radius, colour, torch.full_like(colour, background))
    return (image + 0.1 * torch.randn(n, 3, 64, 64, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def both_sides(request):
    device = request.param
    name, network = (SMALL_NAME, SmallRandomInception) if device == "cpu" else (FULL_NAME, RandomInception)
    samples, reference = blobs(64, -0.8, seed=1), blobs(64, -0.3, seed=2)
    extractor = ImageFeatureExtractor(
        network(name, ["2048", "logits_unbiased"]),
        extractor_id="small-random-inception",
        weights_sha256="0" * 64,
        pool_feature="2048",
        logits_feature="logits_unbiased",
        device=device,
    )
    ours = compute_metrics(samples, reference, extractor=extractor, batch_size=32, progress=False, cache=False)
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Images(samples),  # torch-fidelity: input1 generated, input2 real
        input2=Uint8Images(reference),
        fid=True,
        isc=True,
        prc=True,
        feature_extractor=name,
        cuda=device == "cuda",
        cache=False,
        verbose=False,
        batch_size=32,
        save_cpu_ram=True,  # no DataLoader worker processes
    )
    return ours, theirs


def test_fid_matches_torch_fidelity(both_sides):
    ours, theirs = both_sides
    assert theirs["frechet_inception_distance"] > 0.1  # the two sets do differ
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], abs=1e-3)


def test_inception_score_matches_torch_fidelity(both_sides):
    ours, theirs = both_sides
    assert theirs["inception_score_mean"] > 1.005
    assert ours["is"] == pytest.approx(theirs["inception_score_mean"], abs=1e-6)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], abs=1e-6)


def test_precision_recall_match_torch_fidelity(both_sides):
    ours, theirs = both_sides
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1e-6)
