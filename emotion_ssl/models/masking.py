"""Span masks with an exact masked count per row (data2vec 2.0 block masking, 1-D)."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_span_mask(
    lengths: Tensor,
    max_len: int,
    mask_prob: float = 0.5,
    span_length: int = 5,
    mask_prob_adjust: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask exactly floor(mask_prob * length) valid frames of every row, in spans.

    Per row of valid length T: draw floor(T * (mask_prob + mask_prob_adjust) / span_length)
    random span centres, mark span_length frames around each, then unmask or mask extra
    random frames until exactly floor(mask_prob * T) are masked. Padding is never masked.

    lengths: (B,) long valid frames; returns (B, max_len) bool, True = masked. Drawn on the
    CPU from `generator` (deterministic under a seed), then moved to lengths' device.
    """
    if not 0.0 <= mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
    if span_length < 1:
        raise ValueError(f"span_length must be >= 1, got {span_length}")
    cpu_lengths = lengths.detach().cpu().long().tolist()
    mask = torch.zeros(len(cpu_lengths), max_len, dtype=torch.bool)
    for row, T in enumerate(cpu_lengths):
        if max_len < T:
            raise ValueError(f"length {T} exceeds max_len {max_len}")
        target = int(T * mask_prob)
        if target == 0:
            continue
        num_spans = int(T * (mask_prob + mask_prob_adjust) / span_length)
        row_mask = torch.zeros(T, dtype=torch.bool)
        if num_spans > 0:
            centres = torch.randint(0, T, (num_spans,), generator=generator)
            # a span of span_length frames around each centre (left-heavy for even lengths)
            offsets = torch.arange(span_length) - (span_length - 1) // 2
            idx = (centres.unsqueeze(1) + offsets.unsqueeze(0)).clamp(0, T - 1)
            row_mask[idx.view(-1)] = True
        count = int(row_mask.sum())
        if count > target:  # unmask random masked frames
            masked = row_mask.nonzero().view(-1)
            drop = masked[torch.randperm(len(masked), generator=generator)[: count - target]]
            row_mask[drop] = False
        elif count < target:  # mask random unmasked frames
            free = (~row_mask).nonzero().view(-1)
            add = free[torch.randperm(len(free), generator=generator)[: target - count]]
            row_mask[add] = True
        mask[row, :T] = row_mask
    return mask.to(lengths.device)


def clone_lengths(lengths: Tensor, num_clones: int) -> Tensor:
    """(B,) -> (B * num_clones,) in repeat_interleave order: row b*C + c is clone c of b."""
    return lengths.repeat_interleave(num_clones, dim=0)
