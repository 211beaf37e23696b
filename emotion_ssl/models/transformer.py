"""Transformer pieces of the encoder: ALiBi bias, attention, post-LN block, positional conv."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from emotion_ssl.models.feature_extractor import conv1d_time_last


def alibi_slopes(num_heads: int) -> list[float]:
    """The standard ALiBi slopes (Press et al.), including the non-power-of-2 ordering.

    4 heads -> 0.25, 0.0625, 0.015625, 0.00390625; 12 heads -> the 8-head slopes, then every
    other slope of the 16-head series (0.7071, 0.3536, 0.1768, 0.0884).
    """

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def attention_bias(
    positions: Tensor,
    frame_padding_mask: Tensor | None,
    slopes: Tensor,
    scale: Tensor,
    num_tokens: int,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Additive attention bias for [tokens; frames]: scaled ALiBi between frames, 0 for tokens,
    -inf on padded keys.

    positions: (B, K) long, the time index of each kept frame (distances use original time, so
    a masked sequence keeps its geometry), or (1, K) when every row shares them;
    frame_padding_mask: (B, K) bool, True = padding; slopes: (H,); scale: (H,) already
    clamped at 0 -> (B or 1, H, E+K, E+K) in `dtype` (default float32). Built once per forward
    and shared by every block: a (1, ...) bias broadcasts over the batch inside attention.
    """
    pos = positions.float()
    distance = (pos.unsqueeze(2) - pos.unsqueeze(1)).abs()  # (B, K, K)
    head_slope = (slopes.float() * scale.float()).view(1, -1, 1, 1)  # (1, H, 1, 1)
    bias = -head_slope * distance.unsqueeze(1)  # (B, H, K, K)
    bias = F.pad(bias, (num_tokens, 0, num_tokens, 0))  # tokens: zero bias to and from all
    if frame_padding_mask is not None:
        key_padding = F.pad(frame_padding_mask, (num_tokens, 0), value=False)  # (B, E+K)
        bias = bias.masked_fill(key_padding.view(key_padding.size(0), 1, 1, -1), float("-inf"))
    # cast once here, not in each block (bf16 under autocast: half the bytes per block)
    return bias if dtype is None else bias.to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention with packed qkv (rows [q; k; v]) and an additive bias."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x: (B, L, D); bias: (B or 1, H, L, L) -> (B, L, D)"""
        # packed rows [q; k; v], each split into H heads of D/H channels
        qkv = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, H, L, D/H)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),  # a no-op when the encoder built it in q's dtype
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        out = rearrange(out, "b h l e -> b l (h e)")  # heads side by side again
        return self.proj_dropout(self.proj(out))


class FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Post-LN block: x = x + attn(x); r = x = norm1(x); f = ffn(x); x = norm2(r + f).

    Returns the block output and its "layer result" f, the FFN output before the residual
    and norm2: data2vec 2.0's target layers.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        norm_eps: float,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        post_mlp_dropout: float,
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, attention_dropout, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), activation_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.post_mlp_dropout = nn.Dropout(post_mlp_dropout)

    def forward(self, x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, L, D); bias: (B, H, L, L) -> (out (B, L, D), ffn_out (B, L, D))"""
        x = x + self.attn(x, bias)
        r = x = self.norm1(x)
        ffn_out = self.mlp(x)
        x = self.norm2(r + self.post_mlp_dropout(ffn_out))
        return x, ffn_out


class PositionalConv(nn.Module):
    """depth x [grouped Conv1d(D, D, k, pad k//2) -> LayerNorm(D, no affine) -> GELU].

    Padded frames are zeroed before every layer, so a padded utterance sees exactly the zero
    padding an unpadded one sees at its edge (the reference only zeroes at the input and
    leaks padding into the last ~45 valid frames).
    """

    def __init__(self, dim: int, kernel: int, groups: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth)
        )
        self.dim = dim

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x: (B, T, D); padding_mask: (B, T) True = padding -> (B, T, D)"""
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)
        h = x  # time-major throughout: no transposed copies (see conv1d_time_last)
        for conv in self.layers:
            if keep is not None:
                h = h * keep
            h = F.gelu(F.layer_norm(conv1d_time_last(h, cast(nn.Conv1d, conv)), (self.dim,)))
        return h
