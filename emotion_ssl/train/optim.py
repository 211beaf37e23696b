"""Optimisation settings and the learning-rate schedule both training systems use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimSettings:
    """AdamW and its schedule: linear warm-up, then cosine decay to 0 at the last update."""

    lr: float = 7.5e-5
    """Peak learning rate of AdamW."""

    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""

    eps: float = 1e-6
    """AdamW epsilon."""

    weight_decay: float = 0.01
    """AdamW weight decay (not on biases, norms, utterance tokens, ALiBi scales)."""

    warmup_steps: int = 5000
    """Linear warm-up updates (at most the whole run)."""


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's lr times (step + 1) / (warmup + 1) during the warm-up, then a cosine from
    1 to 0 at `total_steps` (stepped once per optimizer update)."""
    total = max(1, total_steps)
    warmup = min(warmup_steps, total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
