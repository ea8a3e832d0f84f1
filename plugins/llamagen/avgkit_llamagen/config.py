"""Architecture options of the LlamaGen VQ tokenizer (validated, unknown keys refused)."""

from __future__ import annotations

from pydantic import Field, model_validator

from avgkit.registry import ComponentConfig
from avgkit.sizes import ImageSize, image_hw


class VQConfig(ComponentConfig):
    """Encoder/decoder/codebook shape of a LlamaGen-style VQ tokenizer.

    The defaults are LlamaGen's VQ-16 at 256 px. ``weights`` names a file to load
    (safetensors preferred; LlamaGen ``.pt`` checkpoints and plain state dicts are read
    without executing code).
    """

    image_size: ImageSize = Field(256, description="input size in pixels: S (square) or [H, W]")
    channels: int = Field(3, ge=1, description="image channels (in and out)")
    ch: int = Field(128, ge=1, description="base channel count")
    ch_mult: tuple[int, ...] = Field((1, 1, 2, 2, 4), min_length=1, description="channel multiplier per level")
    num_res_blocks: int = Field(2, ge=1, description="res blocks per encoder level (decoder uses one more)")
    z_channels: int = Field(256, ge=1, description="latent channels before quant_conv")
    codebook_size: int = Field(16384, ge=2, le=2**24, description="number of codes")
    codebook_dim: int = Field(8, ge=1, description="code vector size")
    codebook_l2_norm: bool = Field(True, description="l2-normalise codes and latents (cosine nearest code)")
    commit_beta: float = Field(0.25, ge=0.0, description="commitment loss weight")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups (LlamaGen: 32)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside res blocks")
    weights: str | None = Field(None, description="weights file to load (safetensors, .pt or .pth)")

    @property
    def downsample(self) -> int:
        """Image pixels per token side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return image_hw(self.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` tokens: each side divided by the downsampling."""
        h, w = self.image_hw
        return (h // self.downsample, w // self.downsample)

    def architecture(self) -> dict:
        """Fields that decide the state-dict shapes and the math (everything but ``weights``)."""
        return self.model_dump(exclude={"weights"}, mode="json")

    @model_validator(mode="after")
    def _check_shapes(self) -> VQConfig:
        if any(side % self.downsample for side in self.image_hw):
            shown = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
            raise ValueError(
                f"image_size {shown} is not divisible by the downsampling factor {self.downsample} "
                f"(2 ** (len(ch_mult) - 1)); pick an image_size whose sides are multiples of it"
            )
        bad = sorted({c for c in (self.ch, *(self.ch * m for m in self.ch_mult)) if c % self.norm_groups})
        if bad:
            raise ValueError(
                f"channel counts {bad} are not divisible by norm_groups {self.norm_groups}; "
                f"change ch/ch_mult or norm_groups"
            )
        if min(self.ch_mult) < 1:
            raise ValueError("ch_mult entries must be >= 1")
        return self
