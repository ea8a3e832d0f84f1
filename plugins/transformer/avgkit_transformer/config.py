"""Options and named sizes of the transformer backbone.

The ``gpt-*`` presets are LlamaGen's class-conditional GPT sizes. With the LlamaGen
class table (1001 rows, kept by the conditioner in avgkit) they reproduce the
reference parameter counts exactly; see ``REFERENCE_COUNTS``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from avgkit.registry import BackboneConfig


class TransformerConfig(BackboneConfig):
    dim: int = Field(768, ge=4, description="model width")
    layers: int = Field(12, ge=1, description="transformer blocks")
    heads: int = Field(12, ge=1, description="attention heads (head_dim = dim / heads, a multiple of 4)")
    kv_heads: int | None = Field(None, ge=1, description="key/value heads for grouped-query attention; unset = heads")
    multiple_of: int = Field(256, ge=1, description="SwiGLU hidden size is rounded up to a multiple of this")
    ffn_dim_multiplier: float | None = Field(None, gt=0, description="scales the SwiGLU hidden size before rounding")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    rope_base: float = Field(10000.0, gt=0, description="rotary embedding base")
    grid_width: int | None = Field(
        None, ge=1, description="token grid width (columns) for 2D RoPE; taken from the tokenizer's grid when "
        "unset; built without one, sqrt(num_tokens) (a square grid)"
    )
    prefix_rope: Literal["zero", "identity"] = Field(
        "zero",
        description="rotary rows of prefix positions: 'zero' zeroes their queries and keys (LlamaGen), "
        "'identity' leaves them unrotated",
    )
    max_prefix_len: int = Field(1, ge=1, description="longest conditioning prefix the decoding cache holds")
    decode_attention: Literal["auto", "triton", "math", "sdpa"] = Field(
        "auto", description="attention of a decoding step over the KV cache: 'triton' (one kernel reading only the "
        "filled keys, the same bits on every call and batch size), 'math' (matmul, softmax, matmul: also the same bits "
        "on every call), 'auto' (triton on a GPU, math elsewhere) or 'sdpa' (PyTorch's fused kernel, whose one-query "
        "result can change from call to call on a GPU); training and prefill use sdpa"
    )
    token_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the input embeddings (prefix included)")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights")
    resid_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the attention output projection")
    ffn_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the feed-forward output")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth, rising linearly to this at the last block")
    tie_head: bool = Field(False, description="share the output head with the token embedding (LlamaGen: untied)")
    init_std: float = Field(0.02, gt=0, description="std of the normal init of linear and embedding weights")
    zero_head: bool = Field(True, description="zero-initialise the output head (LlamaGen)")
    activation_checkpointing: Literal["none", "blocks", "every_n"] = Field(
        "none", description="training: keep only the inputs of checkpointed blocks and recompute the rest in "
        "backward (every block, or one block in checkpoint_every); less memory for about one forward more"
    )
    checkpoint_every: int = Field(2, ge=1, description="activation_checkpointing every_n: checkpoint blocks 0, n, 2n, ...")

    @model_validator(mode="after")
    def _check_shapes(self) -> TransformerConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 4:
            raise ValueError(f"head_dim {self.dim // self.heads} must be a multiple of 4 for 2D rotary embeddings")
        if self.heads % self.n_kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.n_kv_heads}")
        if self.num_tokens is not None:
            width = self.grid_width or _isqrt(self.num_tokens)
            if width is None:
                raise ValueError(f"num_tokens {self.num_tokens} is not a square; set grid_width")
            if self.num_tokens % width:
                raise ValueError(f"num_tokens {self.num_tokens} is not a multiple of grid_width {width}")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def ffn_hidden(self) -> int:
        return ffn_hidden_size(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def width(self) -> int:
        """Token grid width (columns); raster order is row-major."""
        assert self.num_tokens is not None
        return self.grid_width or _isqrt(self.num_tokens) or self.num_tokens


def _isqrt(n: int) -> int | None:
    r = int(round(n**0.5))
    return r if r * r == n else None


def ffn_hidden_size(dim: int, multiple_of: int, multiplier: float | None = None) -> int:
    """LlamaGen/LLaMA SwiGLU width: ``2/3 * 4 * dim``, optionally scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


_NO_DROPOUT = {"token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0}

PRESETS: dict[str, dict] = {
    "tiny": {"dim": 64, "layers": 2, "heads": 4, "multiple_of": 32, "zero_head": False, **_NO_DROPOUT},
    "gpt-b": {"dim": 768, "layers": 12, "heads": 12},
    "gpt-l": {"dim": 1024, "layers": 24, "heads": 16},
    "gpt-xl": {"dim": 1280, "layers": 36, "heads": 20},
    "gpt-xxl": {"dim": 1536, "layers": 48, "heads": 24},
}

#: LlamaGen c2i GPT parameter counts at vocabulary 16384 and 256 tokens:
#: (reference total, of which the 1001-row class table held by the conditioner).
REFERENCE_COUNTS: dict[str, tuple[int, int]] = {
    "gpt-b": (110_888_448, 1001 * 768),
    "gpt-l": (342_910_976, 1001 * 1024),
    "gpt-xl": (774_699_520, 1001 * 1280),
    "gpt-xxl": (1_410_972_672, 1001 * 1536),
}
