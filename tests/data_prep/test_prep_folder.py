"""A folder with corrupt, empty, 8 kHz, stereo and zero-length files: the good ones make the
manifest, the report names every bad one with its reason, nothing crashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from corpus_trees import wav_bytes

from data_prep.folder import main
from emotion_ssl.data import load_audio, read_manifest

REPO = Path(__file__).resolve().parents[2]


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def build_messy_folder(root: Path) -> None:
    (root / "spk1" / "sess").mkdir(parents=True)
    (root / "spk2").mkdir()
    (root / ".cache").mkdir()
    sf.write(root / "spk1" / "sess" / "good.wav", _tone(1.0, 16000), 16000, subtype="PCM_16")
    sf.write(root / "spk1" / "good_flac.flac", _tone(1.5, 16000), 16000, subtype="PCM_16")
    sf.write(root / "spk1" / "cd.wav", _tone(1.0, 44100), 44100, subtype="PCM_16")
    sf.write(root / "spk2" / "stereo.wav", _tone(1.0, 16000, 2), 16000, subtype="PCM_16")
    sf.write(root / "spk2" / "ogg_clip.ogg", _tone(1.0, 16000), 16000)
    # the bad ones
    sf.write(root / "spk2" / "phone.wav", _tone(1.0, 8000), 8000, subtype="PCM_16")
    (root / "spk2" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunkjunk")
    (root / "spk2" / "empty.flac").write_bytes(b"")
    (root / "spk2" / "zero_length.wav").write_bytes(wav_bytes(0))
    sf.write(root / "spk2" / "blip.wav", _tone(0.1, 16000), 16000, subtype="PCM_16")
    sf.write(root / "spk2" / "surround.wav", _tone(1.0, 16000, 6), 16000, subtype="PCM_16")
    sf.write(root / "spk1" / "good_flac.wav", _tone(1.0, 16000), 16000, subtype="PCM_16")
    # ignored: not audio, hidden, in a hidden folder
    (root / "spk1" / "notes.txt").write_text("not audio")
    (root / "spk1" / "._good.wav").write_bytes(b"\x00\x05\x16\x07")
    sf.write(root / ".cache" / "x.wav", _tone(1.0, 16000), 16000)


EXPECTED_REJECTED = {
    "spk1/good_flac.wav": "duplicate_key",
    "spk2/blip.wav": "too_short",
    "spk2/corrupt.wav": "unreadable",
    "spk2/empty.flac": "empty",
    "spk2/phone.wav": "sample_rate",
    "spk2/surround.wav": "channels",
    "spk2/zero_length.wav": "empty",
}


def test_messy_folder_gives_the_good_files_and_a_reason_for_every_bad_one(
    tmp_path: Path,
) -> None:
    root, out = tmp_path / "corpus", tmp_path / "manifests" / "messy"
    build_messy_folder(root)
    # through the real command line: `python -m data_prep.folder`
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.folder",
            "--root",
            str(root),
            "--out",
            str(out),
            "--speaker-level",
            "0",
            "--workers",
            "4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "7 rejected" in result.stderr

    entries = read_manifest(out / "manifest.jsonl")
    assert [e.key for e in entries] == [
        "spk1/cd",
        "spk1/good_flac",
        "spk1/sess/good",
        "spk2/ogg_clip",
        "spk2/stereo",
    ]
    assert [e.speaker for e in entries] == ["spk1", "spk1", "spk1", "spk2", "spk2"]
    assert all(e.corpus == "messy" and e.label is None for e in entries)
    by_key = {e.key: e for e in entries}
    assert by_key["spk1/cd"].sample_rate == 44100 and by_key["spk1/cd"].num_samples == 44100
    assert by_key["spk2/stereo"].extra == {"channels": 2}
    for entry in entries:  # every usable file loads as 16 kHz mono
        assert load_audio(entry.path).shape == (round(entry.duration * 16000),)

    report = json.loads((out / "report.json").read_text())
    rejected = {r["path"]: r["reason"] for r in report["rejected_files"]}
    assert rejected == EXPECTED_REJECTED
    assert report["scanned"] == 12 and report["usable"] == 5 and report["hidden_skipped"] == 1
    assert report["needs_resampling"] == 1 and report["needs_downmix"] == 1
    assert report["rejected_by_reason"] == {
        "unreadable": 1,
        "empty": 2,
        "too_short": 1,
        "channels": 1,
        "sample_rate": 1,
        "duplicate_key": 1,
    }
    details = {r["path"]: r["detail"] for r in report["rejected_files"]}
    assert details["spk2/phone.wav"] == "8000 Hz (accepted: 16000-192000 Hz)"
    assert details["spk2/empty.flac"] == "0-byte file"
    assert details["spk2/surround.wav"] == "6 channels (at most 2 accepted)"
    markdown = (out / "report.md").read_text()
    for path, reason in EXPECTED_REJECTED.items():
        assert f"| `{path}` | {reason} |" in markdown
    assert "resampled to 16 kHz at load time: 1" in markdown

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["--root", str(root), "--out", str(out), "--speaker-level", "0"]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_options_change_what_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    build_messy_folder(root)
    out = tmp_path / "strict"
    args = [
        "--root",
        str(root),
        "--out",
        str(out),
        "--max-channels",
        "1",
        "--min-rate",
        "8000",
        "--max-rate",
        "16000",
        "--extensions",
        "wav",
        "--decode",
        "--relative-paths",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    rejected = {r["path"]: r["reason"] for r in report["rejected_files"]}
    assert rejected["spk2/stereo.wav"] == "channels"
    assert rejected["spk1/cd.wav"] == "sample_rate"
    assert "spk2/phone.wav" not in rejected and "spk1/good_flac.wav" not in rejected
    entries = read_manifest(out / "manifest.jsonl")
    assert {e.key for e in entries} == {"spk1/good_flac", "spk1/sess/good", "spk2/phone"}
    assert all(
        not Path(line["path"]).is_absolute()
        for line in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    )


def test_a_folder_without_usable_audio_exits_1_with_its_report(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"garbage")
    assert main(["--root", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["rejected_files"][0]["reason"] == "unreadable"
    assert main(["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
