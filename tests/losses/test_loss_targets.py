"""Teacher targets: instance norm over time, frame targets, utterance targets, feature std."""

from __future__ import annotations

import math

import pytest
import torch

from emotion_ssl.losses import (
    feature_std,
    frame_targets,
    instance_norm_over_time,
    utterance_target,
)
from emotion_ssl.losses.targets import time_mean

torch.set_num_threads(1)

EPS = 1e-5  # instance norm and layer norm epsilon


def _padded_pair(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """Three layers (2, 7, 5): row 0 full, row 1 valid for 4 frames then large garbage."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(2, 7, 5, generator=g) * 3 + 1 for _ in range(3)]
    valid = 4
    for h in layers:
        h[1, valid:] = torch.randn(7 - valid, 5, generator=g) * 1e4
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, valid:] = True
    return layers, padding, valid


# ------------------------------------------------------------------ instance norm
def test_instance_norm_by_hand() -> None:
    # channel 0: [1, 2, 3, 4], mean 2.5, biased var 1.25
    # channel 1: [0, 0, 0, 8], mean 2, biased var (4 + 4 + 4 + 36) / 4 = 12
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 8.0]]])
    out = instance_norm_over_time(x, None)
    s0, s1 = math.sqrt(1.25 + EPS), math.sqrt(12 + EPS)
    expected = torch.tensor(
        [[[-1.5 / s0, -2 / s1], [-0.5 / s0, -2 / s1], [0.5 / s0, -2 / s1], [1.5 / s0, 6 / s1]]]
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_instance_norm_each_utterance_and_channel_alone() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 4, generator=g) * torch.tensor([1.0, 10.0, 0.5, 5.0]) + 7.0
    out = instance_norm_over_time(x, None)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3, 4), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.var(dim=1, unbiased=False), torch.ones(3, 4), rtol=0, atol=1e-3)
    # each utterance is normalised alone: changing row 0 leaves row 1 as it was
    y = x.clone()
    y[0] *= 100
    torch.testing.assert_close(instance_norm_over_time(y, None)[1], out[1], rtol=0, atol=0)


def test_instance_norm_ignores_padded_frames() -> None:
    layers, padding, valid = _padded_pair()
    x = layers[0]
    out = instance_norm_over_time(x, padding)
    torch.testing.assert_close(out[1:, :valid], instance_norm_over_time(x[1:, :valid], None))
    torch.testing.assert_close(out[:1], instance_norm_over_time(x[:1], None))
    assert torch.equal(out[1, valid:], torch.zeros(7 - valid, 5))  # padded frames are 0


def test_instance_norm_returns_fp32() -> None:
    x = torch.randn(2, 6, 3).to(torch.bfloat16)
    out = instance_norm_over_time(x, None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, instance_norm_over_time(x.float(), None))


# ------------------------------------------------------------------ frame targets
def test_frame_targets_by_hand() -> None:
    # layer A over time [0, 0, 3]: mean 1, var 2 -> [-1, -1, 2] / sqrt(2)
    # layer B over time [1, 2, 3]: mean 2, var 2/3 -> [-1, 0, 1] / sqrt(2/3)
    a = torch.tensor([[[0.0], [0.0], [3.0]]])
    b = torch.tensor([[[1.0], [2.0], [3.0]]])
    sa, sb = math.sqrt(2 + EPS), math.sqrt(2 / 3 + EPS)
    top1 = frame_targets([a, b], None, top_k=1)  # the last layer only
    torch.testing.assert_close(
        top1, torch.tensor([[[-1 / sb], [0.0], [1 / sb]]]), rtol=0, atol=1e-6
    )
    top2 = frame_targets([a, b], None, top_k=2)
    expected = torch.tensor(
        [[[(-1 / sa - 1 / sb) / 2], [(-1 / sa + 0.0) / 2], [(2 / sa + 1 / sb) / 2]]]
    )
    torch.testing.assert_close(top2, expected, rtol=0, atol=1e-6)


def test_frame_targets_take_the_top_layers() -> None:
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(2, 9, 4, generator=g) for _ in range(4)]
    top2 = frame_targets(layers, None, top_k=2)
    changed = [torch.randn(2, 9, 4, generator=g), torch.randn(2, 9, 4, generator=g)] + layers[2:]
    torch.testing.assert_close(frame_targets(changed, None, top_k=2), top2, rtol=0, atol=0)
    assert not torch.allclose(frame_targets(changed, None, top_k=3), frame_targets(layers, None, 3))


def test_frame_targets_ignore_padded_frames() -> None:
    layers, padding, valid = _padded_pair()
    out = frame_targets(layers, padding, top_k=2)
    unpadded = frame_targets([h[1:, :valid] for h in layers], None, top_k=2)
    torch.testing.assert_close(out[1:, :valid], unpadded)
    assert torch.equal(out[1, valid:], torch.zeros(7 - valid, 5))
    assert out.dtype == torch.float32


def test_layer_norm_frame_targets_by_hand() -> None:
    # one frame per clip, D = 2: layer norm maps [a, b] to [-1, 1] (a < b) or [1, -1], so two
    # clips whose frames are equal over time differ in the target (instance norm: both 0)
    clip = torch.tensor([[[1.0, 3.0], [1.0, 3.0]], [[5.0, 2.0], [5.0, 2.0]]])  # (2, T=2, 2)
    # [1, 3]: mean 2, variance 1; [5, 2]: mean 3.5, variance 2.25
    s0, s1 = 1 / math.sqrt(1 + EPS), 1.5 / math.sqrt(2.25 + EPS)
    expected = torch.tensor([[[-s0, s0]] * 2, [[s1, -s1]] * 2])
    torch.testing.assert_close(
        frame_targets([clip], None, top_k=1, norm="layer"), expected, rtol=0, atol=1e-6
    )
    assert torch.equal(frame_targets([clip], None, top_k=1), torch.zeros(2, 2, 2))
    # two layers are averaged after normalising each
    other = torch.tensor([[[3.0, 1.0], [3.0, 1.0]], [[0.0, 4.0], [0.0, 4.0]]])
    both = frame_targets([clip, other], None, top_k=2, norm="layer")
    torch.testing.assert_close(both, torch.zeros(2, 2, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="frame target norm"):
        frame_targets([clip], None, top_k=1, norm="batch")  # type: ignore[arg-type]


def test_layer_norm_frame_targets_zero_the_padding() -> None:
    layers, padding, valid = _padded_pair()
    out = frame_targets(layers, padding, top_k=2, norm="layer")
    unpadded = frame_targets([h[1:, :valid] for h in layers], None, top_k=2, norm="layer")
    torch.testing.assert_close(out[1:, :valid], unpadded)
    assert torch.equal(out[1, valid:], torch.zeros(7 - valid, 5))


@pytest.mark.parametrize("top_k", [0, 4, -1])
def test_frame_targets_bad_top_k_raises(top_k: int) -> None:
    layers = [torch.randn(1, 3, 2) for _ in range(3)]
    with pytest.raises(ValueError, match="top_k"):
        frame_targets(layers, None, top_k)


# ------------------------------------------------------------------ utterance targets
def test_code_faithful_target_is_zero() -> None:
    layers, padding, _ = _padded_pair(seed=3)
    for pad in (None, padding):
        frame_target = frame_targets(layers, pad, top_k=3)
        target = utterance_target("code_faithful", layers, frame_target, pad, top_k=3)
        assert target.shape == (2, 5)
        assert target.abs().max().item() < 1e-5


def test_code_faithful_is_the_valid_time_mean_of_the_frame_target() -> None:
    frame_target = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    padding = torch.tensor([[False, False, True]])
    target = utterance_target("code_faithful", [torch.zeros(1, 3, 2)], frame_target, padding, 1)
    assert target.tolist() == [[2.0, 3.0]]


def test_layer_norm_target_is_not_zero() -> None:
    layers, padding, _ = _padded_pair(seed=3)
    frame_target = frame_targets(layers, padding, top_k=3)
    target = utterance_target("layer_norm", layers, frame_target, padding, top_k=3)
    assert target.shape == (2, 5)
    assert target.dtype == torch.float32
    # layer-normalised over D: per row mean 0, biased variance ~1, so far from zero
    torch.testing.assert_close(target.pow(2).mean(dim=1), torch.ones(2), rtol=0, atol=1e-3)


def test_layer_norm_target_by_hand() -> None:
    # one layer, D = 3, two frames: [1, 2, 3] and [0, 0, 3]
    h = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]])
    # per-frame layer norm: [-1, 0, 1] / sqrt(2/3) and [-1, -1, 2] / sqrt(2)
    s0, s1 = math.sqrt(2 / 3 + EPS), math.sqrt(2 + EPS)
    m = [(-1 / s0 - 1 / s1) / 2, (0.0 - 1 / s1) / 2, (1 / s0 + 2 / s1) / 2]  # time mean
    mean_m = sum(m) / 3  # 0 up to rounding
    var_m = sum((v - mean_m) ** 2 for v in m) / 3
    expected = torch.tensor([[(v - mean_m) / math.sqrt(var_m + EPS) for v in m]])
    garbage_lower_layer = torch.full_like(h, 123.0) + torch.arange(3.0)
    out = utterance_target("layer_norm", [garbage_lower_layer, h], torch.zeros(1, 2, 3), None, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_layer_norm_target_ignores_padded_frames() -> None:
    layers, padding, valid = _padded_pair(seed=4)
    frame_target = frame_targets(layers, padding, top_k=2)
    out = utterance_target("layer_norm", layers, frame_target, padding, top_k=2)
    short = [h[1:, :valid] for h in layers]
    unpadded = utterance_target("layer_norm", short, frame_targets(short, None, 2), None, 2)
    torch.testing.assert_close(out[1:], unpadded)


def test_layer_norm_target_uses_the_top_k_layers() -> None:
    g = torch.Generator().manual_seed(5)
    layers = [torch.randn(2, 6, 4, generator=g) for _ in range(3)]
    frame_target = torch.zeros(2, 6, 4)
    top2 = utterance_target("layer_norm", layers, frame_target, None, top_k=2)
    changed = [torch.randn(2, 6, 4, generator=g) * 50, *layers[1:]]
    torch.testing.assert_close(
        utterance_target("layer_norm", changed, frame_target, None, top_k=2), top2, rtol=0, atol=0
    )
    top3 = utterance_target("layer_norm", layers, frame_target, None, top_k=3)
    assert not torch.allclose(top3, top2)


@pytest.mark.parametrize("top_k", [0, 4])
def test_layer_norm_target_bad_top_k_raises(top_k: int) -> None:
    # as frame_targets does; layer_results[-0:] would silently take every layer
    layers = [torch.randn(1, 3, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="top_k"):
        utterance_target("layer_norm", layers, torch.zeros(1, 3, 4), None, top_k)


def test_unknown_utterance_target_mode_raises() -> None:
    layers = [torch.randn(1, 3, 4)]
    with pytest.raises(ValueError, match="'mean'"):
        utterance_target("mean", layers, torch.zeros(1, 3, 4), None, 1)  # type: ignore[arg-type]


# ------------------------------------------------------------------ feature std
def test_feature_std_by_hand() -> None:
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    # unbiased variance per channel: 2 and 8
    expected = (math.sqrt(2 + 1e-6) + math.sqrt(8 + 1e-6)) / 2
    assert feature_std(x).item() == pytest.approx(expected, rel=1e-6)


def test_feature_std_of_constant_and_single_rows() -> None:
    assert feature_std(torch.full((5, 3), 7.0)).item() == pytest.approx(1e-3, rel=1e-4)
    assert feature_std(torch.randn(1, 3)).item() == 0.0
    assert feature_std(torch.randn(4, 3).half()).dtype == torch.float32


def test_feature_std_over_masked_rows_equals_selecting_them() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g) * 3 + 1
    mask = torch.rand(3, 7, generator=g) > 0.5
    torch.testing.assert_close(feature_std(x, mask), feature_std(x[mask]))
    x[~mask] = float("nan")  # what is not selected does not matter
    torch.testing.assert_close(feature_std(x, mask), feature_std(x[mask]))
    one = torch.zeros(3, 7, dtype=torch.bool)
    one[1, 2] = True
    assert feature_std(x, one).item() == 0.0  # fewer than two rows, as without a mask
    assert feature_std(x, torch.zeros_like(one)).item() == 0.0


def test_non_finite_padding_does_not_reach_valid_frames() -> None:
    """Padding is removed with masked_fill, so inf/NaN there cannot poison the statistics."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3)
    padded = x.clone()
    padded[0, 3] = float("inf")
    padded[0, 2, 0] = float("nan")
    mask = torch.tensor([[False, False, True, True]])
    clean = instance_norm_over_time(x[:, :2], None)
    got = instance_norm_over_time(padded, mask)
    assert torch.allclose(got[:, :2], clean, atol=1e-6)
    assert torch.all(got[:, 2:] == 0)
    assert torch.allclose(time_mean(padded, mask), x[:, :2].mean(dim=1), atol=1e-6)
