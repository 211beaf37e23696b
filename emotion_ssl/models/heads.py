"""Classification heads over an encoder's frames (fine-tuning and exported classifiers)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.models.encoder import masked_mean

Pooling = Literal["mean", "attentive"]


class ClassificationHead(nn.Module):
    """Pool the valid frames, then a linear layer: logits (B, classes).

    mean: the mean of the valid frames (emotion2vec+'s `proj` over the utterance vector);
    attentive: softmax attention over frames, scores from a small MLP (tanh).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pooling: Pooling = "mean",
        dropout: float = 0.0,
        attention_dim: int = 128,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if pooling not in ("mean", "attentive"):
            raise ValueError(f"pooling must be 'mean' or 'attentive', got {pooling!r}")
        self.pooling = pooling
        self.attention = (
            nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
            if pooling == "attentive"
            else None
        )
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, num_classes)
        self.config = {
            "dim": dim,
            "num_classes": num_classes,
            "pooling": pooling,
            "dropout": dropout,
            "attention_dim": attention_dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClassificationHead:
        return cls(**config)

    def pool(self, frames: Tensor, padding_mask: Tensor | None) -> Tensor:
        """frames: (B, T, D); padding_mask: (B, T) True = padding -> (B, D)"""
        if padding_mask is None:
            padding_mask = torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)
        if self.attention is None:
            return masked_mean(frames, padding_mask)
        scores = self.attention(frames).squeeze(-1).float()  # (B, T)
        weights = F.softmax(scores.masked_fill(padding_mask, float("-inf")), dim=1)
        return (
            weights.unsqueeze(-1).to(frames.dtype)
            * frames.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        ).sum(1)

    def forward(self, frames: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.proj(self.dropout(self.pool(frames, padding_mask)))
