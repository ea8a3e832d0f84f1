"""The text conditioner: a caption becomes a padded prefix and, optionally, adaLN modulation.

    caption --tokenize--> token ids + mask --encoder--> features (B, T, D)
    c      = sos + Linear(masked mean of features)           (null rows: a learned null vector)
    prefix = [features (masked), c]                          (B, T + 1, D), prefix_mask
    layers = adaLN-single of c: SiLU -> Linear(D, 3D), plus a learned (3, D) table per block
    final  = zero-initialised SiLU -> Linear(D, 2D) of c

Encoders (``encoder:``):

* ``words``: lower-case words (split at anything not a letter or digit, so "forty-two"
  is "forty" "two") hashed into ``vocab_size`` buckets, then a small trainable
  transformer encoder; for from-scratch runs on short captions.
* ``bytes``: the caption's UTF-8 bytes, then the same trainable encoder.
* ``t5`` / ``clip``: a frozen pretrained T5 encoder or CLIP text tower loaded with
  ``transformers`` from the local folder ``path`` (never downloaded); only a projection
  to the backbone's width is trained. ``avgkit prepare`` extracts its features of each
  distinct caption once into the code store (:meth:`TextConditioner.frozen_encoder`
  names the encoder, :meth:`TextConditioner.features` computes them), so training never
  runs the encoder; new prompts at sampling time still do.

The last prefix vector is always real (it is ``c``), so an empty caption and the null
condition still give the backbone a prefix to start from.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from avgkit.conditions import Conditions
from avgkit.errors import AvgkitError
from avgkit.interfaces import Conditioner, Conditioning
from avgkit_text.config import TextConditionerConfig

PRETRAINED = ("t5", "clip")


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_id(word: str, vocab_size: int) -> int:
    """A word's bucket in ``[1, vocab_size)`` (stable across processes: crc32, not ``hash``)."""
    return 1 + zlib.crc32(word.encode()) % (vocab_size - 1)


def _pad(rows: list[list[int]], length: int | None = None) -> tuple[Tensor, Tensor]:
    longest = max([len(r) for r in rows] + [1]) if length is None else length
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


class TextConditioner(Conditioner):
    condition_kinds = ("tokens", "embeddings")

    def __init__(self, config: TextConditionerConfig, *, dim: int, num_layers: int) -> None:
        super().__init__()
        c = self.config = config
        self.num_classes = config.num_classes or 0
        self.dim, self.num_layers = dim, num_layers
        self.label_dropout = config.label_dropout
        self._pretrained: list[Any] = []  # (model, tokenizer): kept out of the state dict, never trained
        if c.encoder in PRETRAINED:
            if not c.path:
                raise AvgkitError(f"text encoder {c.encoder!r} needs path: the local folder of the pretrained model "
                                  f"and its tokenizer (set conditioner.path)")
            from avgkit_text.pretrained import feature_width

            self.proj = nn.Linear(feature_width(c.encoder, c.path), dim)
        else:
            w = c.width or dim
            vocab = 257 if c.encoder == "bytes" else c.vocab_size
            self.tok_embed = nn.Embedding(vocab, w, padding_idx=0)
            self.pos_embed = nn.Parameter(torch.randn(c.max_length, w) * c.embed_std)
            nn.init.normal_(self.tok_embed.weight, std=c.embed_std)
            layer = nn.TransformerEncoderLayer(w, c.heads, 4 * w, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False) if c.layers else None
            self.proj = nn.Linear(w, dim)
        self.sos = nn.Parameter(torch.randn(dim) * c.embed_std)
        self.null_embedding = nn.Parameter(torch.randn(dim) * c.embed_std)
        self.pool = nn.Linear(dim, dim)
        if c.modulation == "single":
            self.adaln_single = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
            nn.init.zeros_(self.adaln_single[1].bias)
            self.scale_shift_table = nn.Parameter(torch.randn(num_layers, 3, dim) / dim**0.5)
            self.final_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            nn.init.zeros_(self.final_adaLN_modulation[1].weight)
            nn.init.zeros_(self.final_adaLN_modulation[1].bias)

    # ------------------------------------------------------------------ text -> tokens
    def tokenize(self, texts: Sequence[str]) -> Conditions:
        """Captions -> token ids ``(B, T)`` and mask, padded to the longest (at most ``max_length``)."""
        c = self.config
        if isinstance(texts, str):
            texts = [texts]
        if c.encoder in PRETRAINED:
            _, tok = self._load()
            out = tok(list(texts), padding=True, truncation=True, max_length=c.max_length, return_tensors="pt")
            return Conditions.tokens(out["input_ids"], out["attention_mask"].bool())
        if c.encoder == "bytes":
            rows = [[b + 1 for b in t.encode()][: c.max_length] for t in texts]
        else:
            rows = [[word_id(w, c.vocab_size) for w in words_of(t)][: c.max_length] for t in texts]
        ids, mask = _pad(rows)
        return Conditions.tokens(ids, mask)

    def _load(self) -> tuple[Any, Any]:
        if not self._pretrained:
            from avgkit_text.pretrained import load_pretrained

            assert self.config.path is not None
            self._pretrained.extend(load_pretrained(self.config.encoder, self.config.path))
        model, tok = self._pretrained
        return model, tok

    def frozen_encoder(self, recorded: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The pretrained encoder's identity (``None`` for ``words`` and ``bytes``, which are trained).

        ``kind``, ``sha256`` (of the folder's files: weights, config, tokenizer),
        ``max_length``, ``dtype`` (of the stored features) and ``width`` decide whether
        stored features are this encoder's; ``path`` and ``files`` (sizes and modification
        times, so that ``recorded`` spares hashing unchanged files) are recorded only.
        """
        c = self.config
        if c.encoder not in PRETRAINED:
            return None
        from pathlib import Path

        from avgkit_text.pretrained import folder_digest

        assert c.path is not None
        sha, files = folder_digest(c.path, recorded)
        return {"kind": c.encoder, "path": str(Path(c.path).resolve()), "sha256": sha, "max_length": c.max_length,
                "dtype": c.feature_dtype, "width": self.proj.in_features, "files": files}

    @torch.no_grad()
    def features(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen pretrained encoder's features ``(B, T, E)`` float32 (what the store keeps)."""
        if self.config.encoder not in PRETRAINED:
            raise AvgkitError(f"text encoder {self.config.encoder!r} is trained with the model: it has no features "
                              f"to extract; use encoder: t5 or clip for precomputed features")
        model, _ = self._load()
        device = self.proj.weight.device
        model.to(device)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device).long())
        return out.last_hidden_state.float() * mask.to(device)[..., None]

    # ------------------------------------------------------------------ forward
    def _encode(self, batch: Conditions) -> Tensor:
        assert batch.mask is not None
        if batch.kind == "embeddings":
            return self.proj(batch.values.to(self.proj.weight.dtype))
        if self.config.encoder in PRETRAINED:
            return self.proj(self.features(batch.values, batch.mask).to(self.proj.weight.dtype))
        ids = batch.values[:, : self.config.max_length]
        x = self.tok_embed(ids) + self.pos_embed[: ids.shape[1]]
        if self.encoder is not None:
            mask = batch.mask[:, : ids.shape[1]].clone()
            mask[:, 0] |= ~mask.any(1)  # a row with no token keeps one key: no all-masked softmax
            x = self.encoder(x, src_key_padding_mask=~mask)
        return self.proj(x)

    def forward(self, batch: Any) -> Conditioning:
        if not isinstance(batch, Conditions) or batch.kind == "class":
            raise AvgkitError("the text conditioner takes captions (token ids or embeddings with a mask), not class "
                              "labels; give the run captioned data, or pick a class conditioner (conditioner: adaln)")
        assert batch.mask is not None and batch.null is not None
        feats = self._encode(batch)
        t = feats.shape[1]
        mask = batch.mask[:, :t] & ~batch.null[:, None]
        feats = feats * mask[..., None].to(feats.dtype)
        count = mask.sum(1, keepdim=True).clamp(min=1).to(feats.dtype)
        pooled = feats.sum(1) / count
        cvec = self.sos + self.pool(pooled)
        cvec = torch.where(batch.null[:, None], self.null_embedding.expand_as(cvec), cvec)
        prefix = torch.cat([feats, cvec[:, None]], 1)
        prefix_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        if self.config.modulation == "none":
            return Conditioning(prefix, prefix_mask=prefix_mask)
        sets = self.adaln_single(cvec).view(-1, 1, 3, self.dim)
        layers = (sets + self.scale_shift_table[None]).transpose(0, 1)  # (L, B, 3, D)
        final = self.final_adaLN_modulation(cvec).view(-1, 2, self.dim)
        return Conditioning(prefix, layers, final, prefix_mask)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
        null = torch.ones(batch_size, dtype=torch.bool, device=device)
        if self.config.encoder in PRETRAINED:  # no encoder run for the null rows
            e = self.proj.in_features
            return self(Conditions("embeddings", torch.zeros(batch_size, 1, e, device=device), mask, null))
        return self(Conditions("tokens", ids, mask, null))

    def embedding_parameters(self) -> list[nn.Parameter]:
        if self.config.encoder in PRETRAINED:
            return []
        return [self.tok_embed.weight, self.pos_embed]


__all__ = ["TextConditioner", "TextConditionerConfig", "word_id", "words_of"]
