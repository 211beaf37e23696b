"""A deterministic speech-like corpus for tests and the tiny demo (no downloads).

Each utterance is a harmonic source following a pitch contour, shaped by three
formant-like bands, gated by a syllable envelope, plus breath and floor noise, with
peak 0.1. Written as real 16-bit WAV files with a JSONL manifest in the project schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from emotion_ssl.data.manifest import entry_from_audio_file, write_manifest

PEAK = 0.1
"""Peak absolute amplitude of every synthetic utterance."""


def _syllable_envelope(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """(S,) in [0, 1]: raised-cosine syllables of 120-300 ms separated by 30-150 ms gaps."""
    envelope = np.zeros(num_samples)
    start = int(rng.uniform(0.0, 0.1) * sample_rate)
    while start < num_samples:
        length = int(rng.uniform(0.12, 0.30) * sample_rate)
        window = np.hanning(length) * rng.uniform(0.5, 1.0)
        stop = min(start + length, num_samples)
        envelope[start:stop] = window[: stop - start]
        start = stop + int(rng.uniform(0.03, 0.15) * sample_rate)
    return envelope


def synthesize_utterance(
    rng: np.random.Generator, num_samples: int, sample_rate: int = 16_000, pitch_scale: float = 1.0
) -> np.ndarray:
    """One speech-like utterance. Returns: (S,) float32 with peak `PEAK`."""
    t = np.arange(num_samples) / sample_rate
    # pitch contour: a base pitch with slow declination and a random wobble
    base = rng.uniform(100.0, 220.0) * pitch_scale
    wobble = 0.12 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    f0 = base * (1.0 + wobble) * (1.0 - 0.1 * t / max(t[-1], 1e-3))  # (S,) Hz
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate

    formants = np.array([rng.uniform(500, 800), rng.uniform(1100, 2000), rng.uniform(2300, 3000)])
    bandwidths = np.array([90.0, 130.0, 180.0])
    num_harmonics = int(min(4000.0, 0.45 * sample_rate) // (base * 1.15))
    source = np.zeros(num_samples)
    for k in range(1, num_harmonics + 1):
        frequency = k * f0  # (S,)
        # harmonic gain: spectral tilt plus a bump wherever the harmonic crosses a formant
        bumps = np.exp(-0.5 * ((frequency[:, None] - formants) / bandwidths) ** 2).sum(axis=1)
        source += (0.3 / k + bumps) * np.sin(k * phase)

    envelope = _syllable_envelope(rng, num_samples, sample_rate)
    noise = rng.standard_normal(num_samples)
    signal = source * envelope + noise * (0.05 * envelope + 0.005)
    return (PEAK * signal / np.abs(signal).max()).astype(np.float32)


def write_synthetic_corpus(
    out_dir: str | Path,
    num_files: int = 16,
    seed: int = 0,
    min_seconds: float = 1.0,
    max_seconds: float = 4.0,
    sample_rate: int = 16_000,
    labels: Sequence[str] | None = None,
    corpus: str = "synthetic",
    num_speakers: int = 4,
) -> Path:
    """Write `num_files` WAV files under `out_dir/wav/` and `out_dir/manifest.jsonl`.

    Utterance i depends only on (seed, i): the same call always writes the same audio, and
    a larger `num_files` extends a smaller corpus. With `labels`, utterance i gets
    labels[i % len(labels)] and a pitch raised by 15% per label index, so a probe has
    something to find; speakers cycle over `num_speakers`.

    Returns: the manifest path (relative audio paths, readable with `read_manifest`).
    """
    if num_files < 1 or not 0.0 < min_seconds <= max_seconds:
        raise ValueError(
            f"need num_files >= 1 and 0 < min_seconds <= max_seconds, got {num_files}, "
            f"{min_seconds}, {max_seconds}"
        )
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num_files):
        rng = np.random.default_rng([seed, i])
        num_samples = round(rng.uniform(min_seconds, max_seconds) * sample_rate)
        label_index = i % len(labels) if labels else 0
        waveform = synthesize_utterance(rng, num_samples, sample_rate, 1.0 + 0.15 * label_index)
        key = f"{corpus}_{i:05d}"
        path = wav_dir / f"{key}.wav"
        sf.write(str(path), waveform, sample_rate, subtype="PCM_16")
        entries.append(
            entry_from_audio_file(
                path,
                key,
                corpus=corpus,
                speaker=f"spk{i % num_speakers:02d}",
                label=labels[label_index] if labels else None,
                root=out_dir,
            )
        )
    return write_manifest(out_dir / "manifest.jsonl", entries)
