"""LlamaGen's VQ tokenizer: conv encoder, cosine-similarity codebook, conv decoder.

Module names and parameter shapes follow LlamaGen's ``VQModel`` so its released
checkpoints load unchanged (VQ-16: 71,883,403 parameters, 344 state-dict entries
including the ``quantize.codebook_used`` buffer)::

    encoder.conv_in, encoder.conv_blocks.{level}.res.{i} / .attn.{i} / .downsample.conv,
    encoder.mid.{0,1,2}, encoder.norm_out, encoder.conv_out, quant_conv,
    quantize.embedding, quantize.codebook_used, post_quant_conv,
    decoder.conv_in, decoder.mid.{0,1,2}, decoder.conv_blocks.{level}.res.{i} / .attn.{i}
    / .upsample.conv, decoder.norm_out, decoder.conv_out

Decoder levels are stored lowest resolution first (the order they run in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgkit.interfaces import Tokenizer
from avgkit.sizes import size_text

from .config import VQConfig
from .errors import VQError

#: Length of LlamaGen's rolling window of recently used code indices.
USAGE_WINDOW = 65536


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, 1x1 skip on width change."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SelfAttention2d(nn.Module):
    """Single-head self-attention over all pixels, 1x1 convs for q/k/v/out, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # (B, 1, HW, C): one head; SDPA's default scale is C ** -0.5 as in LlamaGen
        q, k, v = (proj(n).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad one pixel right/bottom, then a 3x3 stride-2 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: res blocks (each followed by attention at the lowest level), then a resampler."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, attention: bool, groups: int, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(blocks):
            self.res.append(ResBlock(in_ch, out_ch, groups, dropout))
            in_ch = out_ch
            if attention:
                self.attn.append(SelfAttention2d(out_ch, groups))

    def blocks(self, h: Tensor) -> Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def middle(channels: int, groups: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        [
            ResBlock(channels, channels, groups, dropout),
            SelfAttention2d(channels, groups),
            ResBlock(channels, channels, groups, dropout),
        ]
    )


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.channels, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            lowest = i == n - 1
            level = Level(width, cfg.ch * mult, cfg.num_res_blocks, lowest, g, cfg.dropout)
            width = cfg.ch * mult
            if not lowest:
                level.downsample = Downsample(width)
            self.conv_blocks.append(level)
        self.mid = middle(width, g, cfg.dropout)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = middle(width, g, cfg.dropout)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(n)):
            level = Level(width, cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1, i == n - 1, g, cfg.dropout)
            width = cfg.ch * cfg.ch_mult[i]
            if i != 0:
                level.upsample = Upsample(width)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.channels, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """Nearest-code lookup with a straight-through gradient.

    With ``l2_norm`` both latents and codes are unit vectors, so the nearest code is
    the one of highest cosine similarity. ``codebook_used`` keeps the last 65,536
    indices seen in training (LlamaGen's usage statistic; stored as float for
    checkpoint compatibility).
    """

    def __init__(self, size: int, dim: int, beta: float, l2_norm: bool) -> None:
        super().__init__()
        self.size, self.dim, self.beta, self.l2_norm = size, dim, beta, l2_norm
        self.embedding = nn.Embedding(size, dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / size, 1.0 / size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    @torch.no_grad()
    def nearest(self, z: Tensor, codebook: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``z`` (N, dim), in row chunks to bound memory."""
        e_sq = codebook.pow(2).sum(1)
        rows = max(1, 2**24 // self.size)  # at most ~16M distances (64 MB fp32) at a time
        out = []
        for part in z.split(rows):
            # |z|^2 + |e|^2 - 2 z.e; |z|^2 is constant per row and cannot change the argmin
            d = torch.addmm(e_sq, part, codebook.t(), alpha=-2.0)
            out.append(d.argmin(1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def forward(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``z`` (B, dim, h, w) -> (quantised z with straight-through grad, losses, indices (B, h, w))."""
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook()
        idx = self.nearest(z.reshape(-1, self.dim).detach(), codebook.detach())
        z_q = codebook[idx].view(z.shape)
        losses = {
            "codebook": (z_q - z.detach()).pow(2).mean(),
            "commit": self.beta * (z_q.detach() - z).pow(2).mean(),
        }
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), losses, idx.view(b, h, w)

    def lookup(self, idx: Tensor) -> Tensor:
        """Indices (B, h, w) -> code vectors (B, dim, h, w)."""
        return self.codebook()[idx].permute(0, 3, 1, 2)

    @torch.no_grad()
    def record_usage(self, idx: Tensor) -> None:
        recent = torch.cat([self.codebook_used, idx.reshape(-1).to(self.codebook_used.dtype)])
        self.codebook_used.copy_(recent[-USAGE_WINDOW:])

    @torch.no_grad()
    def usage(self) -> float:
        """Fraction of the codebook among the recently used indices."""
        return torch.unique(self.codebook_used).numel() / self.size


class LlamaGenVQ(Tokenizer):
    """LlamaGen VQ tokenizer as an avgkit :class:`~avgkit.interfaces.Tokenizer`.

    ``encode`` maps images ``(B, C, H, W)`` in ``[-1, 1]`` to codes ``(B, h*w)`` int64 in
    raster order; ``decode`` maps codes back to images clamped to ``[-1, 1]``;
    ``forward`` is the training path returning the unclamped reconstruction and the
    codebook/commitment losses.
    """

    def __init__(self, config: VQConfig | None = None) -> None:
        super().__init__()
        cfg = config or VQConfig()
        self.config = cfg
        self.codebook_size = cfg.codebook_size
        self.grid = cfg.grid
        self.image_size = cfg.image_size
        self.channels = cfg.channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantizer(cfg.codebook_size, cfg.codebook_dim, cfg.commit_beta, cfg.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def _check_images(self, images: Tensor) -> Tensor:
        want = (self.channels, *self.image_hw)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise VQError(
                f"expected images of shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(images.shape)}; "
                f"resize to image_size {size_text(self.image_size)} with {self.channels} channel(s)"
            )
        return images.to(self.quant_conv.weight.dtype)

    def quantize_images(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Encoder + nearest codes: (quantised latents, losses, indices (B, h, w))."""
        z = self.quant_conv(self.encoder(self._check_images(images)))
        return self.quantize(z)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training path: reconstruction (not clamped) and ``{"codebook", "commit"}`` losses."""
        z_q, losses, idx = self.quantize_images(images)
        if self.training:
            self.quantize.record_usage(idx)
        return self.decode_latents(z_q), losses

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        _, _, idx = self.quantize_images(images)
        return idx.flatten(1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        h, w = self.grid
        if codes.dim() not in (2, 3) or codes.shape[1:].numel() != h * w:
            raise VQError(f"expected codes of shape (B, {h * w}) or (B, {h}, {w}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise VQError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        z_q = self.quantize.lookup(codes.reshape(-1, h, w).long())
        return self.decode_latents(z_q).clamp(-1.0, 1.0)

    def codebook_usage(self) -> float:
        """Fraction of codes among the last 65,536 indices seen in training."""
        return self.quantize.usage()
