"""LPIPS perceptual distance (VGG16 variant) built from user-supplied weights only.

Nothing is downloaded: the caller passes the LPIPS weights file (the learned 1x1
"lin" layers, keys ``lin{0..4}.model.1.weight``, as in LlamaGen/taming's ``vgg.pth``),
which may also hold the VGG16 features (keys ``net.slice{1..5}.{i}.weight/bias``); if it
does not, ``vgg_weights`` names a torchvision ``vgg16`` state dict
(``features.{i}.weight/bias``). Both are read without executing code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import VQError
from .loading import read_state_dict

#: VGG16 ``features`` layout: conv widths, ``"M"`` for max-pooling.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
#: The ``features`` index ranges of the five slices, each ending at relu{1..5}_{2,2,3,3,3}.
_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
_WIDTHS = [64, 128, 256, 512, 512]


def _vgg_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
    return layers


class LPIPS(nn.Module):
    """Learned perceptual distance between images in ``[-1, 1]``; one value per image, shape (B, 1, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        # ImageNet statistics of LPIPS's input scaling (constants, not learned)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        features = _vgg_features()
        self.net = nn.Module()
        for s, (a, b) in enumerate(_SLICES, start=1):
            part = nn.Sequential()
            for i in range(a, b):
                part.add_module(str(i), features[i])
            setattr(self.net, f"slice{s}", part)
        for k, w in enumerate(_WIDTHS):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(w, 1, 1, bias=False))
            setattr(self, f"lin{k}", lin)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:  # grayscale: VGG expects RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total = 0.0
        for s in range(5):
            h = getattr(self.net, f"slice{s + 1}")(h)
            fx, fy = h.chunk(2)
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{s}").model((fx - fy).pow(2)).mean((2, 3), keepdim=True)
        return total

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: dropout stays off


def load_lpips(lpips_weights: str | Path, vgg_weights: str | Path | None = None) -> LPIPS:
    """Build :class:`LPIPS` from weight files, checking that every entry is present."""
    model = LPIPS()
    state = read_state_dict(lpips_weights)
    if not any(k.startswith("net.") for k in state):
        if vgg_weights is None:
            raise VQError(
                f"LPIPS weights {str(lpips_weights)!r} hold no VGG16 features; also set vgg_weights "
                f"to a torchvision vgg16 state dict file"
            )
        for k, v in read_state_dict(vgg_weights).items():
            if k.startswith("features."):
                i = int(k.split(".")[1])
                s = next(n for n, (a, b) in enumerate(_SLICES, start=1) if a <= i < b)
                state[f"net.slice{s}.{k[len('features.') :]}"] = v
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    misshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or misshaped:
        raise VQError(
            f"LPIPS weights do not fit: {len(missing)} missing ({', '.join(missing[:5])}), "
            f"{len(misshaped)} mis-shaped ({', '.join(misshaped[:5])}); expected LlamaGen/taming LPIPS keys"
        )
    model.load_state_dict({k: state[k] for k in own})
    return model
