"""load_audio: mono passthrough, down-mixing, resampling lengths and content, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_ssl.data import AudioReadError, load_audio, resampled_length


def _sine(freq: float, rate: int, num_samples: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(num_samples) / rate)).astype(np.float32)


def test_mono_16k_float_file_is_returned_exactly(tmp_path: Path) -> None:
    samples = np.random.default_rng(0).uniform(-0.9, 0.9, 1234).astype(np.float32)
    path = tmp_path / "mono.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.shape == (1234,)
    np.testing.assert_array_equal(waveform, samples)


def test_stereo_is_downmixed_by_averaging(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    left = rng.uniform(-0.5, 0.5, 800).astype(np.float32)
    right = rng.uniform(-0.5, 0.5, 800).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_8k_stereo_becomes_16k_mono_of_double_length(tmp_path: Path) -> None:
    tone = _sine(440.0, 8_000, 4_000)  # 0.5 s; the other channel is silent
    path = tmp_path / "stereo8k.wav"
    sf.write(path, np.stack([tone, np.zeros_like(tone)], axis=1), 8_000, subtype="FLOAT")
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert waveform.shape == (8_000,) == (resampled_length(4_000, 8_000),)
    # away from the edges the resampled tone is the 16 kHz tone at half amplitude
    expected = _sine(440.0, 16_000, 8_000) / 2
    np.testing.assert_allclose(waveform[400:-400], expected[400:-400], atol=2e-3)


@pytest.mark.parametrize("rate", [44_100, 22_050, 48_000])
def test_resampled_length_matches_load_audio(tmp_path: Path, rate: int) -> None:
    path = tmp_path / f"tone{rate}.wav"
    sf.write(path, _sine(300.0, rate, 12_345), rate, subtype="FLOAT")
    waveform = load_audio(path)
    assert waveform.shape == (math.ceil(12_345 * 16_000 / rate),)
    assert waveform.shape == (resampled_length(12_345, rate),)


def test_empty_file_raises_audio_read_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioReadError, match="no audio samples") as info:
        load_audio(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"RIFF" + b"\x00garbage" * 20, b""])
def test_unreadable_file_raises_audio_read_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioReadError, match="cannot read audio") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_audio_read_error(tmp_path: Path) -> None:
    with pytest.raises(AudioReadError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_nan_samples_raise(tmp_path: Path) -> None:
    samples = np.zeros(100, dtype=np.float32)
    samples[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="NaN"):
        load_audio(path)
