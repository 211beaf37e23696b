"""Reading audio files as 16 kHz mono float32 waveforms.

soundfile does the reading (torchaudio 2.9 no longer reads files); torchaudio's
`functional.resample` does the rate conversion.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from emotion_ssl.models.config import SAMPLE_RATE

TARGET_RATE = SAMPLE_RATE
"""Sample rate every model in this project consumes (`models.config.SAMPLE_RATE`)."""


class AudioReadError(RuntimeError):
    """An audio file could not be turned into a waveform (unreadable, empty or corrupt)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resampled_length(num_samples: int, orig_rate: int, target_rate: int = TARGET_RATE) -> int:
    """Samples after resampling `num_samples` from `orig_rate` to `target_rate`.

    Equals the length `load_audio` returns (torchaudio rounds up), so a manifest's
    `num_samples` at the native rate gives the exact 16 kHz length without reading audio.
    """
    if orig_rate == target_rate:
        return num_samples
    return math.ceil(num_samples * target_rate / orig_rate)


def load_audio(path: str | Path, target_rate: int = TARGET_RATE) -> np.ndarray:
    """Read an audio file as a mono waveform at `target_rate`.

    Returns: (S,) float32, S = `resampled_length(frames, file_rate, target_rate)`.
    Multi-channel audio is down-mixed by averaging the channels.

    Raises: AudioReadError naming the file when it cannot be read, holds no samples,
    or contains NaN/Inf.
    """
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.SoundFileError, OSError, ValueError) as e:
        raise AudioReadError(path, f"cannot read audio ({e})") from e
    return to_mono_at_rate(data, rate, path, target_rate)


def to_mono_at_rate(
    data: np.ndarray, rate: int, path: str | Path, target_rate: int = TARGET_RATE
) -> np.ndarray:
    """Decoded samples (S, C) float32 at `rate` -> (S',) float32 mono at `target_rate`.

    The shared second half of every decoder: down-mix by averaging the channels, check for
    empty or non-finite audio (AudioReadError naming `path`), resample.
    """
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioReadError(path, "file holds no audio samples")
    waveform = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(waveform).all():
        raise AudioReadError(path, "audio contains NaN or Inf samples")
    if rate != target_rate:
        resampled = AF.resample(torch.from_numpy(np.ascontiguousarray(waveform)), rate, target_rate)
        waveform = resampled.numpy()
    return np.ascontiguousarray(waveform, dtype=np.float32)
