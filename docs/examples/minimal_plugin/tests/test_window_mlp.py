"""The example backbone honours avgkit's backbone contract."""

from __future__ import annotations

import torch
from avgkit_window_mlp import WindowMLP, WindowMLPConfig

from avgkit.interfaces import Conditioning
from avgkit.testing.conformance import check_backbone


def make() -> WindowMLP:
    return WindowMLP(WindowMLPConfig(dim=16, layers=2, window=3, vocab_size=16, num_tokens=9))


def test_conforms():
    # every check of the suite, with the toy conditioner with and without adaLN modulation
    check_backbone(make, vocab_size=16, num_tokens=9)


def test_window_limits_what_a_position_sees():
    """With one layer of window 3, logits[:, k] see codes k-3..k-1 only (and the prefix at the start)."""
    model = WindowMLP(WindowMLPConfig(dim=16, layers=1, window=3, vocab_size=16, num_tokens=16)).eval()
    cond = Conditioning(prefix=torch.randn(2, 1, 16))
    codes = torch.randint(0, 16, (2, 16))
    changed = codes.clone()
    changed[:, 5] = (codes[:, 5] + 1) % 16
    with torch.no_grad():
        diff = (model(codes, cond) - model(changed, cond)).abs().amax(dim=(0, 2))
    assert (diff[[6, 7, 8]] > 0).all()
    assert (diff[:6] == 0).all() and (diff[9:] == 0).all()
