"""The batch every training step receives, and the collate functions that build it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class AudioItem:
    """One utterance as a dataset returns it.

    waveform: (S,) float32 16 kHz mono audio (numpy array or tensor).
    label: class index into the data module's `label_names`, -1 = unlabelled.
    """

    key: str
    waveform: np.ndarray | Tensor
    label: int = -1


@dataclass
class AudioBatch:
    """A batch of raw 16 kHz utterances, zero padded at the end.

    waveforms: (B, S) float32; row b is valid for its first lengths[b] samples.
    lengths: (B,) long, valid samples per row.
    labels: (B,) long, class index, -1 = unlabelled.
    keys: B manifest keys, in row order.
    """

    waveforms: Tensor
    lengths: Tensor
    labels: Tensor
    keys: list[str]

    def __post_init__(self) -> None:
        if self.waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (B, S), got shape {tuple(self.waveforms.shape)}")
        batch = self.waveforms.size(0)
        if self.lengths.shape != (batch,) or self.labels.shape != (batch,):
            raise ValueError(
                f"lengths {tuple(self.lengths.shape)} and labels {tuple(self.labels.shape)} "
                f"must both be ({batch},) to match waveforms {tuple(self.waveforms.shape)}"
            )
        if len(self.keys) != batch:
            raise ValueError(f"{len(self.keys)} keys for a batch of {batch} waveforms")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        """The same batch with every tensor on `device` (Lightning calls this to move it)."""
        return AudioBatch(
            waveforms=self.waveforms.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            keys=list(self.keys),
        )

    @property
    def batch_size(self) -> int:
        return self.waveforms.size(0)

    @property
    def num_samples(self) -> int:
        """Valid (non-padding) samples in the whole batch."""
        return int(self.lengths.sum().item())

    @property
    def padding_mask(self) -> Tensor:
        """(B, S) bool, True = padding (sample s of row b is padding iff s >= lengths[b])."""
        positions = torch.arange(self.waveforms.size(1), device=self.lengths.device)
        return positions[None, :] >= self.lengths[:, None]

    @property
    def padded_fraction(self) -> float:
        """Share of `waveforms` that is padding: 1 - num_samples / (B * S)."""
        total = self.waveforms.numel()
        return 0.0 if total == 0 else 1.0 - self.num_samples / total


def collate_audio(items: Sequence[AudioItem]) -> AudioBatch:
    """Stack items into an AudioBatch, zero padding each row to the longest item.

    Returns: waveforms (B, max S_i) float32, lengths (B,) long, labels (B,) long.
    """
    if not items:
        raise ValueError("collate_audio got an empty list of items")
    waveforms = [torch.as_tensor(item.waveform, dtype=torch.float32) for item in items]
    for item, waveform in zip(items, waveforms, strict=True):
        if waveform.dim() != 1 or waveform.numel() == 0:
            raise ValueError(
                f"item {item.key!r}: waveform must be a non-empty (S,) array, "
                f"got shape {tuple(waveform.shape)}"
            )
    lengths = torch.tensor([w.numel() for w in waveforms], dtype=torch.long)
    padded = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)  # (B, S)
    for row, waveform in enumerate(waveforms):
        padded[row, : waveform.numel()] = waveform
    labels = torch.tensor([item.label for item in items], dtype=torch.long)
    return AudioBatch(padded, lengths, labels, [item.key for item in items])


def crop_batch_to_shortest(batch: AudioBatch, generator: np.random.Generator) -> AudioBatch:
    """Crop every row to the batch's shortest length at a random offset (no padding left).

    This is the reference emotion2vec batching: each utterance loses a random stretch so
    that all rows have the shortest row's length L.

    Returns: waveforms (B, L), lengths all L; labels and keys unchanged.
    """
    shortest = int(batch.lengths.min().item())
    # offset_b uniform in [0, length_b - L]; numpy draws from [low, high)
    offsets = generator.integers(0, batch.lengths.cpu().numpy() - shortest + 1)
    rows = [batch.waveforms[b, int(o) : int(o) + shortest] for b, o in enumerate(offsets)]
    return AudioBatch(
        waveforms=torch.stack(rows),  # (B, L)
        lengths=torch.full_like(batch.lengths, shortest),
        labels=batch.labels.clone(),
        keys=list(batch.keys),
    )
