"""Teacher targets: frame targets (data2vec 2.0) and utterance targets (emotion2vec)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

UtteranceMode = Literal["code_faithful", "layer_norm"]
"""The utterance target: the released code's (zero, summed over clones) or ours (layer-normed,
averaged over clones); see `utterance_target`."""


def _valid(padding_mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, T, 1) float: 1 on valid frames."""
    if padding_mask is None:
        return torch.ones(like.shape[:2] + (1,), dtype=like.dtype, device=like.device)
    return (~padding_mask).unsqueeze(-1).to(like.dtype)


def _zero_padding(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    # masked_fill, not a product: inf or NaN in padding must not reach the valid frames
    return x if padding_mask is None else x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def time_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over time of x (B, T, D) on valid frames only -> (B, D)."""
    valid = _valid(padding_mask, x)
    return _zero_padding(x, padding_mask).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def instance_norm_over_time(x: Tensor, padding_mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of each utterance over its valid frames (biased variance, no
    affine): `F.instance_norm` of the reference, made padding-aware. x: (B, T, D) -> fp32."""
    x = _zero_padding(x.float(), padding_mask)  # fp32: statistics over hundreds of frames
    valid = _valid(padding_mask, x)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, 1)
    mean = x.sum(dim=1, keepdim=True) / count
    centred = _zero_padding(x - mean, padding_mask)
    var = centred.pow(2).sum(dim=1, keepdim=True) / count
    return centred * torch.rsqrt(var + eps)


FrameTargetNorm = Literal["instance", "layer"]


def frame_targets(
    layer_results: list[Tensor],
    padding_mask: Tensor | None,
    top_k: int,
    norm: FrameTargetNorm = "instance",
) -> Tensor:
    """Average of the top-k teacher FFN outputs, each normalised.

    norm="instance" (reference): each channel over the utterance's valid frames. That removes
        every channel's clip mean, so nothing in the target differs between two clips as a
        whole (level, pitch register, rate): the clip-level cues of emotion.
    norm="layer" (ours, opt-in): each frame over its channels (no affine), which keeps those
        clip-level differences in the target for the student to predict.
    layer_results: per shared block (B, T, D), utterance tokens already removed -> (B, T, D)
    fp32. Padded frames are 0.
    """
    if not 1 <= top_k <= len(layer_results):
        raise ValueError(f"top_k={top_k} must be in [1, {len(layer_results)}]")
    if norm == "instance":
        normed = [instance_norm_over_time(h, padding_mask) for h in layer_results[-top_k:]]
    elif norm == "layer":
        D = layer_results[-1].size(-1)
        normed = [
            _zero_padding(F.layer_norm(h.float(), (D,)), padding_mask)  # fp32 statistics
            for h in layer_results[-top_k:]
        ]
    else:
        raise ValueError(f"unknown frame target norm {norm!r}; use 'instance' or 'layer'")
    return torch.stack(normed).mean(dim=0)


def utterance_target(
    mode: UtteranceMode,
    layer_results: list[Tensor],
    frame_target: Tensor,
    padding_mask: Tensor | None,
    top_k: int,
) -> Tensor:
    """Per-utterance target of the utterance-level loss -> (B, D) fp32.

    code_faithful: the time-mean of the frame target, as the released code computes it. The
        frame target is instance-normalised over time, so this is identically zero (up to
        rounding): the loss then only pulls the token mean to zero.
    layer_norm (project default): the top-k FFN outputs, each layer-normalised per frame,
        averaged, time-averaged over valid frames, then layer-normalised — an utterance summary
        that keeps its information.
    """
    if not 1 <= top_k <= len(layer_results):
        raise ValueError(f"top_k={top_k} must be in [1, {len(layer_results)}]")
    if mode == "code_faithful":
        return time_mean(frame_target, padding_mask)
    if mode == "layer_norm":
        D = frame_target.size(-1)
        per_frame = torch.stack(
            [F.layer_norm(h.float(), (D,)) for h in layer_results[-top_k:]]
        ).mean(dim=0)
        return F.layer_norm(time_mean(per_frame, padding_mask), (D,))
    raise ValueError(f"unknown utterance target mode {mode!r}; use 'code_faithful' or 'layer_norm'")


def feature_std(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over channels of the per-channel std across rows -> scalar fp32.

    x: (N, D); or x: (..., D) with mask (...) bool: the rows where mask is True, selected with
    `torch.where` instead of boolean indexing (no device synchronisation). The reference's
    `compute_var` (sqrt(var + 1e-6), unbiased variance), used for logging and the collapse
    guard; fewer than two rows give 0.
    """
    x = x.float()
    if mask is None:
        if x.size(0) < 2:
            return x.new_zeros(())
        return torch.sqrt(x.var(dim=0) + 1e-6).mean()
    rows = tuple(range(mask.dim()))
    chosen = mask.unsqueeze(-1)
    n = mask.sum()
    mean = torch.where(chosen, x, 0.0).sum(dim=rows) / n.clamp_min(1)
    var = torch.where(chosen, (x - mean).pow(2), 0.0).sum(dim=rows) / (n - 1).clamp_min(1)
    return torch.where(n >= 2, torch.sqrt(var + 1e-6).mean(), 0.0)
