"""Span masks with an exact masked count per row (data2vec 2.0 block masking, 1-D)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor

from emotion_ssl.models.config import SettingsError


@dataclass
class MaskingSettings:
    """How the student's input is masked: each clip is copied `num_clones` times (the clone
    batch) and each copy gets its own span mask (`compute_span_mask`)."""

    num_clones: int = 8
    """Masked copies of each clip the student encodes (the teacher sees the clip once)."""

    mask_prob: float = 0.5
    """Share of each clone's valid frames masked: exactly floor(mask_prob * T)."""

    mask_length: int = 5
    """Frames per mask span."""

    mask_prob_adjust: float = 0.05
    """Extra span centres drawn before the masked count is made exact."""

    def __post_init__(self) -> None:
        if self.num_clones < 1:
            raise SettingsError(f"masking.num_clones={self.num_clones} must be at least 1")
        if not 0.0 <= self.mask_prob < 1.0:
            raise SettingsError(f"masking.mask_prob={self.mask_prob} must be in [0, 1)")
        if self.mask_length < 1:
            raise SettingsError(f"masking.mask_length={self.mask_length} must be at least 1")


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """Move a host tensor to `device` without a host-device synchronisation (pinned memory,
    non-blocking copy on CUDA; a plain copy elsewhere)."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def compute_span_mask(
    lengths: Tensor,
    max_len: int,
    mask_prob: float = MaskingSettings.mask_prob,
    span_length: int = MaskingSettings.mask_length,
    mask_prob_adjust: float = MaskingSettings.mask_prob_adjust,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask exactly floor(mask_prob * length) valid frames of every row, in spans.

    Per row of valid length T: draw floor(T * (mask_prob + mask_prob_adjust) / span_length)
    random span centres, mark span_length frames around each, then unmask or mask extra
    random frames until exactly floor(mask_prob * T) are masked. Padding is never masked.

    lengths: (B,) long valid frames; returns (B, max_len) bool, True = masked, on lengths'
    device. The random numbers are drawn on the CPU from `generator` (deterministic under a
    seed; their shapes depend only on B and max_len), the rest runs on lengths' device for all
    rows at once, without reading anything back to the host.
    """
    if not 0.0 <= mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
    if span_length < 1:
        raise ValueError(f"span_length must be >= 1, got {span_length}")
    device = lengths.device
    if device.type == "cpu":  # free to check on the host; elsewhere it would be a sync
        too_long = lengths > max_len
        if bool(too_long.any()):
            raise ValueError(f"length {int(lengths[too_long][0])} exceeds max_len {max_len}")
    B = lengths.size(0)
    max_spans = int(max_len * (mask_prob + mask_prob_adjust) / span_length)
    # every draw up front, on the CPU: centres (B, max_spans) and tie-breaks (B, max_len)
    centre_draw = torch.rand(B, max_spans, generator=generator, dtype=torch.float64)
    priority = torch.rand(B, max_len, generator=generator)
    centre_draw, priority = to_device(centre_draw, device), to_device(priority, device)

    lengths = lengths.long()
    # float64 reproduces Python's int(T * p) and int(T * (p + adjust) / span) exactly
    target = (lengths.double() * mask_prob).floor().long()  # (B,) frames to mask
    num_spans = (lengths.double() * (mask_prob + mask_prob_adjust) / span_length).floor().long()
    last = (lengths - 1).clamp_min(0).view(B, 1, 1)

    # spans: centre c covers c - (span - 1) // 2 ... (left-heavy for even spans), clamped
    centres = (centre_draw * lengths.unsqueeze(1)).floor().long()  # (B, max_spans) in [0, T)
    offsets = torch.arange(span_length, device=device) - (span_length - 1) // 2
    idx = torch.minimum((centres.unsqueeze(2) + offsets).clamp_min(0), last)  # (B, S, span)
    unused = torch.arange(max_spans, device=device).unsqueeze(0) >= num_spans.unsqueeze(1)
    idx = idx.masked_fill(unused.unsqueeze(2), max_len)  # unused spans go to a scratch column
    in_span = torch.zeros(B, max_len + 1, dtype=torch.bool, device=device)
    in_span.scatter_(1, idx.view(B, -1), True)
    in_span = in_span[:, :max_len]

    # exact count: keep the `target` highest-priority valid frames, span frames first. If the
    # spans cover too many frames this unmasks a uniformly random subset of them; too few, it
    # adds uniformly random unmasked frames: the two corrections of data2vec 2.0.
    valid = torch.arange(max_len, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    key = (priority + in_span.to(priority.dtype)).masked_fill(~valid, -1.0)  # (B, max_len)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(max_len, device=device).expand(B, -1)
    )
    return rank < target.unsqueeze(1)


def clone_lengths(lengths: Tensor, num_clones: int) -> Tensor:
    """(B,) -> (B * num_clones,): row b*C + c is clone c of b (the clone batch's order)."""
    return repeat(lengths, "b -> (b c)", c=num_clones)
