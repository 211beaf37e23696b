"""PretrainDataset: short entries dropped and counted, deterministic crops, labels, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_ssl.data import AudioReadError, ManifestEntry, entry_from_audio_file, load_audio
from emotion_ssl.data.pretrain import PretrainDataset


def _wav(
    folder: Path, name: str, num_samples: int, rate: int = 16_000, label: str | None = None
) -> ManifestEntry:
    samples = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    path = folder / f"{name}.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    return entry_from_audio_file(path, corpus="test", label=label)


def test_short_entries_are_dropped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [
        _wav(tmp_path, "short", 4_000),  # 0.25 s
        _wav(tmp_path, "long", 20_000),
        _wav(tmp_path, "short8k", 3_999, rate=8_000),  # 7 998 samples at 16 kHz: short
        _wav(tmp_path, "ok8k", 4_000, rate=8_000),  # exactly 8 000 at 16 kHz: kept
    ]
    with caplog.at_level(logging.WARNING):
        dataset = PretrainDataset(entries, min_sample_size=8_000, name="m.jsonl")
    assert dataset.num_dropped_short == 2
    assert [e.key for e in dataset.entries] == ["long", "ok8k"]
    assert dataset.lengths.tolist() == [20_000, 8_000]
    assert "m.jsonl: dropped 2 of 4 entries shorter than min_sample_size=8000" in caplog.text
    item = dataset[1]
    assert item.key == "ok8k" and item.waveform.shape == (8_000,) and item.label == -1


def test_long_clips_are_cropped_deterministically_per_epoch(tmp_path: Path) -> None:
    entries = [_wav(tmp_path, "a", 48_000), _wav(tmp_path, "b", 12_000)]
    full = load_audio(entries[0].path)

    def offset(dataset: PretrainDataset, epoch: int) -> int:
        dataset.set_epoch(epoch)
        crop = np.asarray(dataset[0].waveform)
        assert crop.shape == (16_000,)
        starts = np.flatnonzero(full == crop[0])  # candidates, then exact comparison
        found = [o for o in starts if np.array_equal(full[o : o + 16_000], crop)]
        assert len(found) == 1
        return found[0]

    first = PretrainDataset(entries, max_sample_size=16_000, seed=4)
    second = PretrainDataset(entries, max_sample_size=16_000, seed=4)
    assert first.lengths.tolist() == [16_000, 12_000]
    offsets = [offset(first, epoch) for epoch in range(5)]
    assert offsets == [offset(second, epoch) for epoch in range(5)]  # a resumed run crops alike
    assert len(set(offsets)) > 1  # and the crop moves from epoch to epoch
    assert offsets != [
        offset(PretrainDataset(entries, max_sample_size=16_000, seed=5), e) for e in range(5)
    ]
    np.testing.assert_array_equal(first[1].waveform, load_audio(entries[1].path))  # short: whole


def test_labels_map_to_indices_and_unknown_labels_are_errors(tmp_path: Path) -> None:
    entries = [
        _wav(tmp_path, "x", 9_000, label="sad"),
        _wav(tmp_path, "y", 9_001),
        _wav(tmp_path, "z", 9_002, label="ang"),
    ]
    dataset = PretrainDataset(entries, ["ang", "hap", "sad"])
    assert dataset.labels.tolist() == [2, -1, 0]
    assert [dataset[i].label for i in range(3)] == [2, -1, 0]
    assert PretrainDataset(entries).labels.tolist() == [-1, -1, -1]  # no label_names: unlabelled
    with pytest.raises(
        ValueError,
        match="lab.jsonl: entry 'x' has label 'sad', which is not in label_names \\['ang', 'hap'\\]",
    ):
        PretrainDataset(entries, ["ang", "hap"], name="lab.jsonl")


def test_unreadable_files_are_skipped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [_wav(tmp_path, "g0", 9_000), _wav(tmp_path, "g1", 9_100)]
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF????WAVEfmt nonsense")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    # manifests that claim a proper length for files that turn out to be broken
    broken = [ManifestEntry(p.stem, str(p), 16_000, 16_000, 1.0, "test") for p in (garbage, empty)]
    dataset = PretrainDataset([good[0], broken[0], broken[1], good[1]], name="m.jsonl")
    assert len(dataset) == 4 and dataset.num_dropped_short == 0

    with caplog.at_level(logging.WARNING):
        assert dataset[1].key == "g1"  # garbage -> empty -> g1
    assert dataset.num_read_failures == 2 and dataset.num_substituted == 1
    assert f"skipping unreadable audio {garbage}" in caplog.text
    assert f"skipping unreadable audio {empty}: file holds no audio samples" in caplog.text
    assert set(dataset.unreadable) == {1, 2}

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert dataset[2].key == "g1"
        assert dataset[0].key == "g0"
    assert caplog.text == ""  # known-bad files are skipped without reading them again
    assert dataset.num_read_failures == 2 and dataset.num_substituted == 2

    all_bad = PretrainDataset(broken, name="bad.jsonl")
    with pytest.raises(AudioReadError, match="bad.jsonl: none of its 2 audio files could be read"):
        all_bad[0]


def test_file_longer_than_its_manifest_entry_is_cropped_to_the_budgeted_length(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = _wav(tmp_path, "grown", 30_000)
    stale = ManifestEntry(entry.key, entry.path, 10_000, 16_000, 0.625, "test")
    dataset = PretrainDataset([stale])
    with caplog.at_level(logging.WARNING):
        assert np.asarray(dataset[0].waveform).shape == (10_000,)
    assert "manifest entry says 10000" in caplog.text
