"""The top-level names the README promises."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import emotion_ssl
from emotion_ssl.export.extract import FeatureExtractor
from emotion_ssl.export.frozen import load_encoder
from emotion_ssl.models.config import EncoderConfig
from emotion_ssl.models.encoder import EmotionEncoder


def test_top_level_names_are_the_library_objects() -> None:
    assert emotion_ssl.load_encoder is load_encoder
    assert emotion_ssl.FeatureExtractor is FeatureExtractor
    assert emotion_ssl.EmotionEncoder is EmotionEncoder
    assert emotion_ssl.EncoderConfig is EncoderConfig
    assert set(emotion_ssl.__all__) <= set(dir(emotion_ssl))  # tab completion lists them
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


def test_importing_the_package_stays_light() -> None:
    """`import emotion_ssl` loads the model code only: no Lightning, no export or training."""
    code = (
        "import sys, emotion_ssl; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' "
        "or m.startswith(('emotion_ssl.export', 'emotion_ssl.train', 'emotion_ssl.demo'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
