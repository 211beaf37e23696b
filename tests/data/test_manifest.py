"""Manifest schema: round trip, path resolution, errors naming file and line, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_ssl.data import (
    AudioReadError,
    ManifestEntry,
    ManifestError,
    entry_from_audio_file,
    read_manifest,
    write_manifest,
)

GOOD = {
    "key": "u1",
    "path": "wav/u1.wav",
    "num_samples": 16000,
    "sample_rate": 16000,
    "duration": 1.0,
    "speaker": "s1",
    "label": "neu",
    "corpus": "c",
}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_round_trip_keeps_every_field_and_extras(tmp_path: Path) -> None:
    entries = [
        ManifestEntry("a", "wav/a.wav", 16000, 16000, 1.0, "iemocap", "Ses01F", "ang", {"fold": 1}),
        ManifestEntry("b", "/abs/b.flac", 8000, 8000, 1.0, "crema", None, None, {"text": "hé"}),
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["fold"] == 1 and lines[0]["label"] == "ang"
    assert "label" not in lines[1] and lines[1]["speaker"] is None  # label absent, speaker null

    read = read_manifest(manifest)
    assert read[0] == ManifestEntry(
        "a", str(tmp_path / "wav/a.wav"), 16000, 16000, 1.0, "iemocap", "Ses01F", "ang", {"fold": 1}
    )
    assert read[1] == entries[1]  # absolute path untouched


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    manifest = _write_lines(tmp_path / "sub" / "m.jsonl", [json.dumps(GOOD)])
    assert read_manifest(manifest)[0].path == str(tmp_path / "sub" / "wav" / "u1.wav")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    second = dict(GOOD, key="u2")
    manifest = _write_lines(tmp_path / "m.jsonl", [json.dumps(GOOD), "", "  ", json.dumps(second)])
    assert [e.key for e in read_manifest(manifest)] == ["u1", "u2"]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"key": "x", "path": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "num_samples"}),
            "missing field(s) num_samples",
        ),
        (json.dumps({k: v for k, v in GOOD.items() if k != "speaker"}), "missing field(s) speaker"),
        (
            json.dumps(dict(GOOD, num_samples="16000")),
            "field 'num_samples' must be a non-negative integer",
        ),
        (
            json.dumps(dict(GOOD, num_samples=True)),
            "field 'num_samples' must be a non-negative integer",
        ),
        (
            json.dumps(dict(GOOD, num_samples=-1)),
            "field 'num_samples' must be a non-negative integer",
        ),
        (json.dumps(dict(GOOD, sample_rate=0)), "field 'sample_rate' must be a positive integer"),
        (json.dumps(dict(GOOD, duration="1.0")), "field 'duration' must be a non-negative number"),
        (json.dumps(dict(GOOD, key="")), "field 'key' must be a non-empty string"),
        (json.dumps(dict(GOOD, speaker=3)), "field 'speaker' must be a string or null"),
        (json.dumps(dict(GOOD, label=["neu"])), "field 'label' must be a string or null"),
    ],
)
def test_errors_name_file_line_and_problem(tmp_path: Path, bad_line: str, problem: str) -> None:
    manifest = _write_lines(tmp_path / "m.jsonl", [json.dumps(dict(GOOD, key="ok")), "", bad_line])
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    message = str(info.value)
    assert message.startswith(f"{manifest}:3: "), message
    assert problem in message


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    other = dict(GOOD, key="u2")
    manifest = _write_lines(tmp_path / "m.jsonl", [json.dumps(x) for x in (GOOD, other, GOOD)])
    with pytest.raises(
        ManifestError, match=r"m\.jsonl:3: duplicate key 'u1' \(first seen on line 1\)"
    ):
        read_manifest(manifest)


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "m.jsonl"
    old = ManifestEntry("old", "a.wav", 1, 16000, 1 / 16000, "c")
    write_manifest(target, [old])
    new = ManifestEntry("new", "b.wav", 2, 16000, 2 / 16000, "c")
    write_manifest(target, [new])
    assert [e.key for e in read_manifest(target)] == ["new"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.jsonl"]

    # a failed write leaves the previous manifest untouched (and no temp file behind)
    clashing = ManifestEntry("x", "x.wav", 1, 16000, 1.0, "c", extra={"label": "shadow"})
    with pytest.raises(ValueError, match="shadow schema fields"):
        write_manifest(target, [new, clashing])
    with pytest.raises(ValueError, match="duplicate key 'new'"):
        write_manifest(target, [new, new])
    assert [e.key for e in read_manifest(target)] == ["new"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.jsonl"]


def test_entry_from_audio_file_reads_the_header(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    path = tmp_path / "audio" / "clip.wav"
    sf.write(path, np.zeros((2205, 2), dtype=np.float32), 22050)
    entry = entry_from_audio_file(path, corpus="demo", speaker="s", label="hap", root=tmp_path)
    assert entry == ManifestEntry("clip", "audio/clip.wav", 2205, 22050, 0.1, "demo", "s", "hap")
    assert entry_from_audio_file(path, key="k").path == str(path)
    # written next to root and read back, the relative path resolves to the file
    manifest = write_manifest(tmp_path / "m.jsonl", [entry])
    assert read_manifest(manifest)[0].path == str(path)


def test_entry_from_unreadable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"not audio")
    with pytest.raises(AudioReadError, match="bad.wav"):
        entry_from_audio_file(path)
