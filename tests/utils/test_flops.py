"""Analytic FLOPs against a hand calculation for the tiny config (1 s clip, 2 clones)."""

from __future__ import annotations

import pytest
import torch

from emotion_ssl.models import EncoderConfig
from emotion_ssl.models.feature_extractor import conv_output_lengths
from emotion_ssl.utils.flops import (
    cnn_macs,
    conv_frame_counts,
    inference_flops,
    peak_flops,
    pretrain_flops,
)

torch.set_num_threads(1)

# tiny: CNN 32 channels (10,5) (3,2)x4 (2,2)x2; D=64, FFN 256, 1 prenet + 2 shared blocks,
# 10 tokens; positional conv 5 layers, kernel 95 // 5 = 19, groups 4; decoder 4 layers of
# 32 channels, kernel 7, groups 4, then Linear(32 -> 64).
# One 1 s clip = 16 000 samples; frames per CNN layer, floor((L - k) / s) + 1:
FRAMES = [3199, 1599, 799, 399, 199, 99, 49]
T, K, E = 49, 25, 10  # frames, kept frames (49 - floor(0.5 * 49)), utterance tokens
CNN_MACS = (
    3199 * 32 * 1 * 10  # 1 023 680
    + 1599 * 32 * 32 * 3  # 4 912 128
    + 799 * 32 * 32 * 3  # 2 454 528
    + 399 * 32 * 32 * 3  # 1 225 728
    + 199 * 32 * 32 * 3  # 611 328
    + 99 * 32 * 32 * 2  # 202 752
    + 49 * 32 * 32 * 2  # 100 352
)  # = 10 530 496
PROJ_MACS = 49 * 32 * 64  # 100 352
POS_CONV_MACS = 49 * 5 * (64 * 16 * 19)  # 5 layers x 19 456 per frame = 4 766 720
LINEAR_PER_ROW = 4 * 64 * 64 + 2 * 64 * 256  # qkv + out (16 384) + FFN (32 768) = 49 152
STUDENT_BLOCKS = 3 * (35 * LINEAR_PER_ROW + 2 * 35 * 35 * 64)  # L = 10 + 25: 5 631 360
TEACHER_BLOCKS = 3 * (59 * LINEAR_PER_ROW + 2 * 59 * 59 * 64)  # L = 10 + 49: 10 036 608
DECODER_MACS = 49 * (32 * 16 * 7 + 3 * 32 * 8 * 7 + 32 * 64)  # 49 x 11 008 = 539 392


def test_frame_counts_match_the_encoder() -> None:
    config = EncoderConfig.tiny()
    assert conv_frame_counts(16_000, config) == FRAMES
    assert int(conv_output_lengths(torch.tensor([16_000]), config.conv_layers)) == T
    assert cnn_macs(16_000, config) == CNN_MACS == 10_530_496


def test_tiny_pretraining_flops_by_hand() -> None:
    flops = pretrain_flops(EncoderConfig.tiny(), clip_seconds=1.0, num_clones=2, mask_prob=0.5)
    # trained parts: 2 FLOPs per MAC x 3 (forward + backward); teacher: 2 x forward only
    assert flops.cnn == 6 * CNN_MACS
    assert flops.projection == 6 * PROJ_MACS
    assert flops.student_pos_conv == 6 * 2 * POS_CONV_MACS  # every frame of both clones
    assert flops.student_transformer == 6 * 2 * STUDENT_BLOCKS == 6 * 2 * 5_631_360
    assert flops.decoder == 6 * 2 * DECODER_MACS
    assert flops.teacher_pos_conv == 2 * POS_CONV_MACS
    assert flops.teacher_transformer == 2 * TEACHER_BLOCKS == 2 * 10_036_608
    hand_total = 6 * (
        CNN_MACS + PROJ_MACS + 2 * (POS_CONV_MACS + STUDENT_BLOCKS + DECODER_MACS)
    ) + 2 * (POS_CONV_MACS + TEACHER_BLOCKS)
    assert flops.total == hand_total == 224_641_408  # 6 x 32 505 792 + 2 x 14 803 328
    assert flops.as_dict()["total"] == hand_total


def test_per_second_scaling_and_inference() -> None:
    config = EncoderConfig.tiny()
    # a 2 s clip costs at least twice the linear parts: per second, within the attention term
    one, two = pretrain_flops(config, 1.0).total, pretrain_flops(config, 2.0).total
    assert two == pytest.approx(one, rel=0.1)
    hand = 2 * (CNN_MACS + PROJ_MACS + POS_CONV_MACS + TEACHER_BLOCKS)
    assert inference_flops(config, 1.0) == hand


def test_base_is_about_150_gflop_per_second_of_audio() -> None:
    # 147 GFLOP for 10 s clips; the issue's ~181 is the cost of 1 s clips, where the 8 x 10
    # utterance-token rows weigh most (docs/performance.md)
    assert 140e9 < pretrain_flops(EncoderConfig.base(), clip_seconds=10.0).total < 155e9
    assert 175e9 < pretrain_flops(EncoderConfig.base(), clip_seconds=1.0).total < 185e9


def test_peak_table() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("Intel Xeon", "fp32") is None
