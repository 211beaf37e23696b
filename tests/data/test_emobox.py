"""EmoBox metadata files <-> the manifest schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion_ssl.data import (
    ManifestEntry,
    ManifestError,
    read_emobox_manifest,
    write_emobox_manifest,
)

# a line as EmoBox publishes it (data/iemocap/fold_1/iemocap_test_fold_1.jsonl)
EMOBOX_LINE = {
    "key": "iemocap-Ses01F_impro04_F000",
    "dataset": "iemocap",
    "wav": "downloads/iemocap/Session1/sentences/wav/Ses01F_impro04/Ses01F_impro04_F000.wav",
    "type": "raw",
    "sample_rate": 16000,
    "num_frame": 70312.0,
    "task": "category",
    "length": 4.3945,
    "emo": "neu",
    "channel": 1,
}


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_emobox_fields_map_onto_the_schema(tmp_path: Path) -> None:
    (tmp_path / "fold_1").mkdir()
    meta = _write(tmp_path / "fold_1" / "test.jsonl", [EMOBOX_LINE])
    [entry] = read_emobox_manifest(meta, data_root=tmp_path / "emobox")
    assert entry.key == "iemocap-Ses01F_impro04_F000"
    assert entry.path == str(tmp_path / "emobox" / EMOBOX_LINE["wav"])  # type: ignore[operator]
    assert entry.num_samples == 70312 and isinstance(entry.num_samples, int)
    assert entry.sample_rate == 16000 and entry.duration == 4.3945
    assert entry.label == "neu" and entry.corpus == "iemocap" and entry.speaker is None
    assert entry.extra == {"type": "raw", "task": "category", "channel": 1}
    # default root: the metadata file's folder; corpus override
    [entry] = read_emobox_manifest(meta, corpus="iemocap4")
    assert entry.path.startswith(str(tmp_path / "fold_1")) and entry.corpus == "iemocap4"


def test_round_trip_through_an_emobox_file(tmp_path: Path) -> None:
    entries = [
        ManifestEntry(
            "a", "/data/a.wav", 32000, 16000, 2.0, "ravdess", "Actor_01", "ang", {"fold": 1}
        ),
        ManifestEntry("b", "/data/b.flac", 48000, 48000, 1.0, "ravdess", "Actor_02", None),
    ]
    path = write_emobox_manifest(tmp_path / "out.jsonl", entries)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "key": "a",
        "dataset": "ravdess",
        "wav": "/data/a.wav",
        "type": "raw",
        "sample_rate": 16000,
        "num_frame": 32000,
        "task": "category",
        "length": 2.0,
        "emo": "ang",
        "channel": 1,
        "speaker": "Actor_01",
        "fold": 1,
    }
    back = read_emobox_manifest(path)
    assert [
        (e.key, e.path, e.num_samples, e.sample_rate, e.duration, e.label, e.speaker) for e in back
    ] == [
        (e.key, e.path, e.num_samples, e.sample_rate, e.duration, e.label, e.speaker)
        for e in entries
    ]
    assert back[0].extra["fold"] == 1


def test_num_frame_is_optional_and_bad_lines_are_named(tmp_path: Path) -> None:
    line = {k: v for k, v in EMOBOX_LINE.items() if k != "num_frame"}
    [entry] = read_emobox_manifest(_write(tmp_path / "a.jsonl", [line]))
    assert entry.num_samples == round(4.3945 * 16000)
    cases = [
        ({**EMOBOX_LINE, "start_time": 0.5, "end_time": 1.0}, "segment entries"),
        ({**EMOBOX_LINE, "type": "feature"}, "type 'feature' is not raw audio"),
        ({k: v for k, v in EMOBOX_LINE.items() if k != "wav"}, "missing EmoBox field\\(s\\) wav"),
        ({**EMOBOX_LINE, "sample_rate": 0}, "sample_rate must be a positive number"),
    ]
    for record, message in cases:
        path = _write(tmp_path / "bad.jsonl", [EMOBOX_LINE | {"key": "first"}, record])
        with pytest.raises(ManifestError, match=f"bad.jsonl:2: {message}"):
            read_emobox_manifest(path)
    path = _write(tmp_path / "dup.jsonl", [EMOBOX_LINE, EMOBOX_LINE])
    with pytest.raises(ManifestError, match="dup.jsonl:2: duplicate key"):
        read_emobox_manifest(path)
