"""Frame loss: mean over masked frames of the squared L2 error, scaled by 1/sqrt(D)."""

from __future__ import annotations

import math

import pytest
import torch

from emotion_ssl.losses import frame_loss

torch.set_num_threads(1)


def test_hand_computed_single_row() -> None:
    prediction = torch.zeros(1, 3, 4)
    target = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 0.0]]])
    mask = torch.tensor([[True, False, True]])
    # masked errors: 4 and 8 -> mean 6 -> / sqrt(4) = 3
    assert frame_loss(prediction, target, mask).item() == 3.0


def test_mean_over_all_masked_frames_not_over_rows() -> None:
    prediction = torch.zeros(2, 3, 4)
    target = torch.zeros(2, 3, 4)
    target[0, 0] = 1.0  # row 0: one masked frame with error 4
    mask = torch.tensor([[True, False, False], [True, True, True]])  # row 1: three exact frames
    # (4 + 0 + 0 + 0) / 4 frames / sqrt(4) = 0.5 (a mean of row means would give 1.0)
    assert frame_loss(prediction, target, mask).item() == 0.5


def test_unmasked_frames_do_not_matter() -> None:
    g = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 5, 8, generator=g)
    target = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, False, True]])
    reference = frame_loss(prediction, target, mask)
    garbage = prediction.clone()
    garbage[~mask] = 1e6
    assert torch.equal(frame_loss(garbage, target, mask), reference)


def test_non_finite_unmasked_frames_get_zero_gradient() -> None:
    # padding or anything else outside the mask may hold inf/NaN: the loss and the gradient
    # of the masked frames stay finite and the others get exactly 0
    prediction = torch.zeros(1, 3, 2, requires_grad=True)
    target = torch.tensor([[[1.0, 1.0], [float("nan"), 0.0], [float("inf"), 0.0]]])
    mask = torch.tensor([[True, False, False]])
    loss = frame_loss(prediction, target, mask)
    assert loss.item() == pytest.approx(2.0 / math.sqrt(2))
    loss.backward()
    assert prediction.grad is not None
    assert torch.equal(prediction.grad[0, 1:], torch.zeros(2, 2))
    assert torch.isfinite(prediction.grad).all()


def test_no_masked_frame_gives_zero_connected_to_the_graph() -> None:
    prediction = torch.randn(2, 3, 4, requires_grad=True)
    loss = frame_loss(prediction, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert prediction.grad is not None and torch.equal(prediction.grad, torch.zeros(2, 3, 4))


def test_gradient_by_hand() -> None:
    prediction = torch.zeros(1, 2, 4, requires_grad=True)
    target = torch.zeros(1, 2, 4)
    target[0, 0, 1] = 3.0
    mask = torch.tensor([[True, True]])
    frame_loss(prediction, target, mask).backward()
    assert prediction.grad is not None
    # d/dp of (p - t)^2 / (M sqrt(D)) = 2 (p - t) / (2 * 2) = (0 - 3) / 2
    expected = torch.zeros(1, 2, 4)
    expected[0, 0, 1] = -1.5
    assert torch.equal(prediction.grad, expected)


def test_empty_mask_is_zero_and_differentiable() -> None:
    prediction = torch.randn(2, 3, 4, requires_grad=True)
    loss = frame_loss(prediction, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert prediction.grad is not None and torch.equal(prediction.grad, torch.zeros(2, 3, 4))


def test_low_precision_inputs_give_fp32() -> None:
    prediction = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    target = torch.ones(1, 2, 4, dtype=torch.bfloat16)
    loss = frame_loss(prediction, target, torch.tensor([[True, False]]))
    assert loss.dtype == torch.float32
    assert loss.item() == 2.0  # 4 / sqrt(4)
