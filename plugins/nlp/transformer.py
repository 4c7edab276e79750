"""A small pre-norm Transformer encoder-decoder (Vaswani et al. 2017), written out in one readable file.

Why not ``torch.nn.Transformer``: its encoder layers take a fused "fast path" in eval mode that skips their
``nn.Dropout`` modules, so MC dropout (:mod:`activelab.torchkit.dropout`, which switches on exactly those modules) would
silently give identical passes. Here every dropout is an ``nn.Dropout`` module on a residual branch or on the
embeddings, and attention uses ``F.scaled_dot_product_attention`` without dropout of its own.

One shared (joint source-target) vocabulary: the source and target embeddings and the output projection are one
tied matrix, as in many small NMT systems. Learned positional embeddings up to ``max_len`` positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: bool, broadcastable to (B, heads, Tq, Tk), True where attention is allowed."""
        b, tq, d = x.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        k, v = self.kv(memory).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(k), split(v), attn_mask=mask)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, tq, d)))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.ff(self.norm2(x))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, heads, dropout)
        self.cross_attn = Attention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor,
                cross_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(y)
        y = y + self.self_attn(h, h, self_mask)
        y = y + self.cross_attn(self.norm2(y), memory, cross_mask)
        return y + self.ff(self.norm3(y))


class Seq2SeqTransformer(nn.Module):
    """``forward(src, tgt_in)`` -> logits (B, Tt, V). Token id ``pad`` is padding."""

    def __init__(self, vocab_size: int, pad: int, d_model: int = 64, heads: int = 4, layers: int = 2,
                 d_ff: int = 256, dropout: float = 0.1, max_len: int = 128):
        super().__init__()
        self.pad, self.max_len, self.d_model = pad, max_len, d_model
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad)
        self.src_pos = nn.Embedding(max_len, d_model)
        self.tgt_pos = nn.Embedding(max_len, d_model)
        self.src_drop, self.tgt_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[pad].zero_()

    def _embed(self, tokens: torch.Tensor, pos: nn.Embedding, drop: nn.Dropout) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return drop(self.embed(tokens) * math.sqrt(self.d_model) + pos(positions)[None])

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B, Ts, D) and the key mask (B, 1, 1, Ts) the decoder's cross-attention uses."""
        key_mask = (src != self.pad)[:, None, None, :]
        x = self._embed(src, self.src_pos, self.src_drop)
        for layer in self.encoder:
            x = layer(x, key_mask)
        return self.enc_norm(x), key_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
        self_mask = causal[None, None] & (tgt_in != self.pad)[:, None, None, :] | torch.eye(
            t, dtype=torch.bool, device=tgt_in.device)[None, None]     # a padded position still sees itself
        y = self._embed(tgt_in, self.tgt_pos, self.tgt_drop)
        for layer in self.decoder:
            y = layer(y, memory, self_mask, key_mask)
        return self.dec_norm(y) @ self.embed.weight.T

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, key_mask = self.encode(src)
        return self.decode(tgt_in, memory, key_mask)
