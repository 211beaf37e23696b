"""Frame-level (data2vec) regression loss on masked frames."""

from __future__ import annotations

import math

from torch import Tensor


def frame_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """mean over masked frames i of ||prediction_i - target_i||^2 / sqrt(D).

    prediction, target: (R, T, D); mask: (R, T) bool, True = masked (and valid) -> scalar fp32.
    The 1/sqrt(D) scale is the reference's `loss_scale=None` default; it keeps the loss size
    independent of the model width.
    """
    pred = prediction[mask].float()  # (M, D), rows ascending then time ascending
    tgt = target[mask].float()
    if pred.numel() == 0:
        return prediction.sum() * 0.0
    return (pred - tgt).pow(2).sum(dim=-1).mean() / math.sqrt(pred.size(-1))
