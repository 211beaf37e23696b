"""Utterance-level prediction variants and loss reductions."""

from __future__ import annotations

import pytest
import torch

from emotion_ssl.losses import utterance_loss, utterance_prediction

torch.set_num_threads(1)

TOKENS = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]])  # (1, 3, 2)


def test_chunk_is_the_token_mean() -> None:
    out = utterance_prediction("chunk", TOKENS, torch.zeros(1, 4, 2), None)
    assert out.tolist() == [[3.0, 5.0]]


def test_token_is_the_last_token() -> None:
    out = utterance_prediction("token", TOKENS, torch.zeros(1, 4, 2), None)
    assert out.tolist() == [[5.0, 9.0]]


def test_global_is_the_masked_mean_of_frames() -> None:
    frames = torch.tensor(
        [
            [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]],
            [[2.0, 6.0], [4.0, -2.0], [1000.0, -1000.0]],  # last frame is padding
        ]
    )
    padding = torch.tensor([[False, False, False], [False, False, True]])
    out = utterance_prediction("global", torch.zeros(2, 3, 2), frames, padding)
    assert out.tolist() == [[3.0, 2.0], [3.0, 2.0]]
    # without padding: the plain mean over frames
    out = utterance_prediction("global", torch.zeros(2, 3, 2), frames[:, :2], None)
    assert out.tolist() == [[2.0, 1.0], [3.0, 2.0]]


def test_global_fully_padded_row_is_finite() -> None:
    frames = torch.ones(1, 2, 2)
    out = utterance_prediction("global", torch.zeros(1, 3, 2), frames, torch.ones(1, 2).bool())
    assert out.tolist() == [[0.0, 0.0]]


def test_unknown_variant_raises() -> None:
    with pytest.raises(ValueError, match="'first'"):
        utterance_prediction("first", TOKENS, torch.zeros(1, 4, 2), None)  # type: ignore[arg-type]


def test_loss_sum_and_mean_by_hand() -> None:
    prediction = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 2.0]])
    target = torch.zeros(2, 4)
    # rows: 30 / sqrt(4) = 15 and 4 / sqrt(4) = 2
    assert utterance_loss(prediction, target, "sum").item() == 17.0
    assert utterance_loss(prediction, target, "mean").item() == 8.5
    assert utterance_loss(prediction, target).item() == 8.5  # mean is the default


def test_sum_grows_with_rows_mean_does_not() -> None:
    prediction = torch.ones(1, 16)
    target = torch.zeros(1, 16)
    one = utterance_loss(prediction, target, "sum")
    eight = utterance_loss(prediction.repeat(8, 1), target.repeat(8, 1), "sum")
    assert one.item() == 4.0  # 16 / sqrt(16)
    assert eight.item() == 32.0
    assert utterance_loss(prediction.repeat(8, 1), target.repeat(8, 1), "mean").item() == 4.0


def test_loss_is_fp32_and_differentiable() -> None:
    prediction = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16, requires_grad=True)
    loss = utterance_loss(prediction, torch.zeros(1, 4, dtype=torch.bfloat16), "mean")
    assert loss.dtype == torch.float32
    loss.backward()
    assert prediction.grad is not None
    # d/dp (p^2 / 2) = p = 2
    assert prediction.grad.float().tolist() == [[2.0, 0.0, 0.0, 0.0]]


def test_unknown_reduction_raises() -> None:
    with pytest.raises(ValueError, match="'max'"):
        utterance_loss(torch.zeros(1, 2), torch.zeros(1, 2), "max")  # type: ignore[arg-type]
