"""The top-level names the README promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emotion_ssl
from emotion_ssl.export.extract import FeatureExtractor
from emotion_ssl.export.frozen import load_encoder


def test_top_level_names_are_the_library_objects() -> None:
    assert emotion_ssl.load_encoder is load_encoder
    assert emotion_ssl.FeatureExtractor is FeatureExtractor
    assert set(emotion_ssl.__all__) >= {
        "EmotionEncoder",
        "EncoderConfig",
        "FeatureExtractor",
        "load_encoder",
    }
    with pytest.raises(AttributeError, match="no attribute 'load_encoders'"):
        emotion_ssl.load_encoders  # noqa: B018


def test_top_level_extraction_runs() -> None:
    torch.manual_seed(0)
    encoder = emotion_ssl.EmotionEncoder(emotion_ssl.EncoderConfig.tiny()).eval()
    clip = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    (features,) = emotion_ssl.FeatureExtractor(encoder).extract([clip])
    assert features["frames"].shape == (24, encoder.config.embed_dim)
