"""The training loss by chunks (no full logits) and activation checkpointing: same loss and gradients, less memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avgkit.build import ARModel
from avgkit.losses import linear_cross_entropy
from avgkit.testing.memory import PeakMemory

# bf16 autocast: both paths round the logits' matmul inputs to bf16, but the chunked path
# sums the head's gradient over chunks in fp32 (the plain path in one bf16 matmul)
BF16_LOSS_ATOL = 2e-3
BF16_GRAD_RTOL = 3e-2  # of each gradient's largest entry


def _problem(n: int = 300, d: int = 32, v: int = 97, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.3).requires_grad_()
    return x, w, torch.randint(0, v, (n,), generator=g)


def _grads(loss_fn, *params):
    for p in params:
        p.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert float((a - b).abs().max() / scale) <= rtol, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("chunk_rows", [1, 64, 77, 300, 1000])
def test_chunked_loss_and_gradients_equal_the_plain_path_in_fp32(chunk_rows):
    x, w, t = _problem()
    ref_loss, ref = _grads(lambda: F.cross_entropy(F.linear(x, w).float(), t), x, w)
    loss, got = _grads(lambda: linear_cross_entropy(x, w, t, chunk_rows=chunk_rows), x, w)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_loss_follows_autocast_like_the_plain_path():
    x, w, t = _problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref = _grads(lambda: F.cross_entropy(F.linear(x, w).float(), t), x, w)
        loss, got = _grads(lambda: linear_cross_entropy(x, w, t, chunk_rows=64), x, w)
    fp32_loss, _ = _grads(lambda: F.cross_entropy(F.linear(x, w).float(), t), x, w)
    assert abs(float(loss - ref_loss)) <= BF16_LOSS_ATOL
    assert float(loss - fp32_loss) != 0  # the matmul really ran in bf16
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        _close(a, b, BF16_GRAD_RTOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_gradient_kernel_forms_agree(dtype):
    """The GPU's compiled form (out of place) and the eager in-place form of a chunk's loss and gradient."""
    from avgkit.losses import _softmax_grad

    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(70, 97, generator=g) * 4).to(dtype)
    t = torch.randint(0, 97, (70,), generator=g)
    ref_loss = F.cross_entropy(logits.float(), t, reduction="sum")
    ref_grad = (torch.softmax(logits.float(), -1) - F.one_hot(t, 97)) / 300
    for fn in (_softmax_grad, torch.compile(_softmax_grad, dynamic=False, fullgraph=True)):
        for in_place in (False, True) if fn is _softmax_grad else (False,):
            loss, grad = fn(logits.clone(), t, 1 / 300, in_place=in_place)
            assert grad.dtype == dtype
            torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(grad.float(), ref_grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                                       atol=1e-5 if dtype == torch.bfloat16 else 1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_chunked_loss_on_the_gpu_follows_the_plain_path_under_autocast():
    """On a GPU, with ``compiled``, the chunk's softmax gradient runs as one compiled kernel: same loss and
    gradients as the plain path."""
    x, w, t = (v.detach().cuda() for v in _problem(n=4096, d=64, v=1000))
    x.requires_grad_()
    w.requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_loss, ref = _grads(lambda: F.cross_entropy(F.linear(x, w).float(), t), x, w)
        loss, got = _grads(lambda: linear_cross_entropy(x, w, t, chunk_rows=1000, compiled=True), x, w)
    assert abs(float(loss - ref_loss)) <= BF16_LOSS_ATOL
    for a, b in zip(got, ref, strict=True):
        _close(a, b, BF16_GRAD_RTOL)


def test_no_grad_and_shape_errors():
    x, w, t = _problem()
    with torch.no_grad():
        loss = linear_cross_entropy(x, w, t, chunk_rows=50)
    torch.testing.assert_close(loss, F.cross_entropy(x @ w.T, t))
    with pytest.raises(ValueError, match="do not match targets"):
        linear_cross_entropy(x, w, t[:-1])


def test_chunked_loss_never_holds_the_full_logits():
    x, w, t = _problem(n=2048, d=64, v=4096)
    logits_bytes = 2048 * 4096 * 4
    peaks = {}
    for name, fn in (("plain", lambda: F.cross_entropy(F.linear(x, w).float(), t)),
                     ("chunked", lambda: linear_cross_entropy(x, w, t, chunk_rows=256))):
        with PeakMemory() as mem:
            fn().backward()
        peaks[name] = mem.peak
    assert peaks["plain"] >= 2 * logits_bytes  # logits and their softmax/gradient
    assert peaks["chunked"] < logits_bytes / 2, peaks


# ------------------------------------------------------------------ through the backbones


def _model(backbone: str, **opts) -> ARModel:
    from avgkit.plugins import get_registry

    reg = get_registry()
    if backbone not in reg.names("backbone"):
        pytest.skip(f"backbone {backbone!r} not installed")
    spec = reg.get("backbone", backbone)
    extra = {"impl": "torch"} if backbone == "mamba2" else {}
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 64, "num_tokens": 16, **extra, **opts}))
    cspec = reg.get("conditioner", "adaln-group")
    cond = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim, num_layers=bb.num_layers)
    with torch.no_grad():  # the adaLN projections start at zero: draw them so modulation matters
        for p in cond.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    return ARModel(bb, cond).train()


def _model_grads(model: ARModel, fused: bool, codes, labels, autocast: bool = False):
    model.fused_loss = fused
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same dropout draws
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(codes, labels, loss=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [("mamba2", {}), ("mamba2", {"tie_embeddings": False}), ("transformer", {}),
         ("transformer", {"tie_head": True})]


@pytest.mark.parametrize(("backbone", "opts"), CASES, ids=["mamba2", "mamba2-untied", "transformer",
                                                           "transformer-tied"])
def test_backbone_loss_by_chunks_matches_full_logits(backbone, opts):
    model = _model(backbone, **opts)
    assert callable(model.backbone.head_features)
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 64, (3, 16), generator=g), torch.randint(0, 10, (3,), generator=g)
    ref_loss, ref = _model_grads(model, False, codes, labels)
    loss, got = _model_grads(model, True, codes, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() == {n for n, p in model.named_parameters()}  # every parameter, tied head too
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # plain forward still gives the logits; their loss is the same number
    with torch.no_grad():
        torch.manual_seed(1)
        logits = model(codes, labels)
    assert logits.shape == (3, 16, 64)
    torch.testing.assert_close(F.cross_entropy(logits.float().flatten(0, 1), codes.flatten()), ref_loss,
                               rtol=1e-6, atol=1e-6)

    bf_ref_loss, bf_ref = _model_grads(model, False, codes, labels, autocast=True)
    bf_loss, bf_got = _model_grads(model, True, codes, labels, autocast=True)
    assert abs(float(bf_loss - bf_ref_loss)) <= BF16_LOSS_ATOL
    for name in bf_ref:
        _close(bf_got[name], bf_ref[name], BF16_GRAD_RTOL)


@pytest.mark.parametrize("backbone", ["mamba2", "transformer"])
@pytest.mark.parametrize("mode", ["blocks", "every_n"])
def test_activation_checkpointing_keeps_gradients_and_saves_memory(backbone, mode):
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 64, (4, 16), generator=g), torch.randint(0, 10, (4,), generator=g)
    plain = _model(backbone)
    ckpt = _model(backbone, activation_checkpointing=mode, checkpoint_every=2)
    ckpt.load_state_dict(plain.state_dict())
    peaks, results = {}, {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with PeakMemory() as mem:
            loss = model(codes, labels, loss=True)
            peaks[name] = mem.current  # after the forward: what is kept for backward
            loss.backward()
        results[name] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    assert torch.equal(results["ckpt"][0], results["plain"][0])
    for name, grad in results["plain"][1].items():
        assert torch.equal(results["ckpt"][1][name], grad), name
    assert peaks["ckpt"] < peaks["plain"], peaks
    with torch.no_grad():  # evaluation is unaffected
        ckpt.eval()
        plain.eval()
        torch.testing.assert_close(ckpt(codes, labels), plain(codes, labels), rtol=0, atol=0)
