"""Utterance-level (emotion2vec "chunk" / "token" / "global") loss."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor

UtteranceVariant = Literal["chunk", "token", "global"]
Reduction = Literal["mean", "sum"]


def utterance_prediction(
    variant: UtteranceVariant,
    tokens: Tensor,
    frames: Tensor,
    frame_padding: Tensor | None,
) -> Tensor:
    """The student's utterance prediction per clone -> (R, D).

    tokens: (R, E, D) utterance-token outputs; frames: (R, K, D) outputs of the kept
    (unmasked) frames; frame_padding: (R, K) True = padding.
    chunk: mean of the E tokens (the paper's best variant, released recipe);
    token: the last token (the reference takes index E-1 although its comment says "first");
    global: mean of the kept frame outputs.
    """
    if variant == "chunk":
        return tokens.mean(dim=1)
    if variant == "token":
        return tokens[:, -1]
    if variant == "global":
        if frame_padding is None:
            return frames.mean(dim=1)
        keep = (~frame_padding).unsqueeze(-1).to(frames.dtype)
        summed = frames.masked_fill(frame_padding.unsqueeze(-1), 0.0).sum(dim=1)
        return summed / keep.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"unknown utterance variant {variant!r}; use 'chunk', 'token' or 'global'")


def utterance_loss(prediction: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Sum over D of (prediction - target)^2 / sqrt(D), then mean or sum over the R rows.

    prediction, target: (R, D) -> scalar fp32. "sum" reproduces the released code, whose
    utterance term therefore grows with batch size x clones; "mean" is the project default.
    """
    per_row = (prediction.float() - target.float()).pow(2).sum(dim=-1) / math.sqrt(
        prediction.size(-1)
    )
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.mean()
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
