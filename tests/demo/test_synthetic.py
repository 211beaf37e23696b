"""write_synthetic_corpus (the flat corpus of the one generator): deterministic, speech-like
enough, and a valid manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_ssl.data import load_audio, read_manifest
from emotion_ssl.demo.corpus import write_synthetic_corpus


def test_manifest_describes_the_written_files(synthetic_manifest: Path) -> None:
    entries = read_manifest(synthetic_manifest)
    assert len(entries) == 24
    assert [e.label for e in entries] == [["ang", "hap", "neu", "sad"][i % 4] for i in range(24)]
    assert {e.speaker for e in entries} == {"spk00", "spk01", "spk02", "spk03"}
    for entry in entries:
        info = sf.info(entry.path)
        assert (entry.num_samples, entry.sample_rate) == (info.frames, 16_000)
        assert entry.duration == pytest.approx(entry.num_samples / 16_000)
        assert 0.3 <= entry.duration <= 2.0
        assert entry.corpus == "synthetic"
    # paths are stored relative to the manifest, so the corpus can be moved
    assert '"path": "wav/synthetic_00000.wav"' in synthetic_manifest.read_text()


def test_same_seed_writes_the_same_corpus_and_more_files_extend_it(tmp_path: Path) -> None:
    small = write_synthetic_corpus(
        tmp_path / "a", num_files=3, seed=7, min_seconds=0.5, max_seconds=1.0
    )
    again = write_synthetic_corpus(
        tmp_path / "b", num_files=3, seed=7, min_seconds=0.5, max_seconds=1.0
    )
    larger = write_synthetic_corpus(
        tmp_path / "c", num_files=5, seed=7, min_seconds=0.5, max_seconds=1.0
    )
    other = write_synthetic_corpus(
        tmp_path / "d", num_files=3, seed=8, min_seconds=0.5, max_seconds=1.0
    )
    assert small.read_text() == again.read_text()
    assert larger.read_text().startswith(small.read_text())
    for name in ("synthetic_00000", "synthetic_00002"):
        audio = load_audio(tmp_path / "a" / "wav" / f"{name}.wav")
        np.testing.assert_array_equal(audio, load_audio(tmp_path / "c" / "wav" / f"{name}.wav"))
    assert small.read_text() != other.read_text()


def test_audio_is_speech_like(synthetic_manifest: Path) -> None:
    for entry in read_manifest(synthetic_manifest)[:6]:
        audio = load_audio(entry.path)
        assert np.abs(audio).max() == pytest.approx(0.1, rel=1e-3)  # 16-bit rounding only
        frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)  # (T, 320): 20 ms frames
        energy = (frames**2).mean(axis=1)
        # syllables and pauses: frames within 20 dB of the loudest, and frames below that
        assert 0.4 < (energy > 0.01 * energy.max()).mean() < 0.95
        # voiced: most energy below 4 kHz, a harmonic spectrum rather than white noise
        spectrum = np.abs(np.fft.rfft(audio)) ** 2
        frequencies = np.fft.rfftfreq(len(audio), 1 / 16_000)
        assert spectrum[frequencies < 4_000].sum() > 0.95 * spectrum.sum()


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        write_synthetic_corpus(tmp_path, num_files=2, min_seconds=2.0, max_seconds=1.0)
    with pytest.raises(ValueError, match="num_files >= 1"):
        write_synthetic_corpus(tmp_path, num_files=0)
