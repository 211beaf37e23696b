"""Frame-level (data2vec) regression loss on masked frames."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def frame_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """mean over masked frames i of ||prediction_i - target_i||^2 / sqrt(D).

    prediction, target: (R, T, D); mask: (R, T) bool, True = masked (and valid) -> scalar fp32.
    The 1/sqrt(D) scale is the reference's `loss_scale=None` default; it keeps the loss size
    independent of the model width. Computed with `torch.where` over all frames rather than by
    boolean indexing, which would read the mask back to the host (a device synchronisation
    every step); unmasked frames get exactly zero gradient whatever they hold. No masked frame:
    0, still connected to the graph.
    """
    diff = torch.where(mask.unsqueeze(-1), prediction.float() - target.float(), 0.0)
    count = mask.sum().clamp_min(1)
    return diff.pow(2).sum() / count / math.sqrt(prediction.size(-1))
