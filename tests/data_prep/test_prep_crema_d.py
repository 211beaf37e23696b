"""CREMA-D preparation against the real file list and durations (placeholder audio)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from corpus_trees import CREMA_D, PLACEHOLDER_RATE, crema_d_durations, wav_bytes

from data_prep.common import PrepError
from data_prep.crema_d import main, prepare_crema_d
from emotion_ssl.data import read_manifest
from emotion_ssl.data.labelled import select_fold

SIX = {"ang": 1271, "dis": 1271, "fea": 1271, "hap": 1271, "neu": 1087, "sad": 1271}


def test_intended_labels_counts_and_speaker_independent_folds(
    crema_d_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "crema_d"
    assert main(["--root", str(crema_d_tree), "--out", str(out)]) == 0
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 7442
    assert Counter(e.label for e in entries) == SIX
    assert len({e.speaker for e in entries}) == 91
    first = entries[0]
    assert first.key == "1001_DFA_ANG_XX" and first.speaker == "1001" and first.label == "ang"
    assert first.extra == {
        "actor": 1001,
        "sentence": "DFA",
        "level": "XX",
        "intended": "ang",
        "fold": 1,
    }
    # durations are the real ones (to the placeholders' 1 ms)
    real = crema_d_durations()
    assert max(abs(e.duration - real[e.key]) for e in entries) <= 0.5 / PLACEHOLDER_RATE + 1e-9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hours"] == pytest.approx(sum(real.values()) / 3600, abs=2e-3)

    # actors sorted by id, dealt round-robin: fold k holds actors 1000 + k, + 5, + 10, ...
    actors_by_fold = {
        k: sorted({int(e.speaker) for e in select_fold(entries, k, "test")})  # type: ignore[arg-type]
        for k in range(1, 6)
    }
    assert actors_by_fold[1][:3] == [1001, 1006, 1011]
    assert [len(a) for a in actors_by_fold.values()] == [19, 18, 18, 18, 18]
    per_actor = Counter(e.key[:4] for e in entries)
    sizes = [len(select_fold(entries, k, "test")) for k in range(1, 6)]
    assert sizes == [sum(per_actor[str(a)] for a in actors_by_fold[k]) for k in range(1, 6)]
    assert sizes == [1557, 1475, 1470, 1464, 1476]
    for k in range(1, 6):
        train, test = select_fold(entries, k, "train"), select_fold(entries, k, "test")
        assert not {e.speaker for e in train} & {e.speaker for e in test}
        assert len(train) + len(test) == 7442

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["--root", str(crema_d_tree), "--out", str(out)]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_voice_labels_come_from_the_crowd_and_ties_are_left_out(
    crema_d_tree: Path, tmp_path: Path
) -> None:
    entries = prepare_crema_d(crema_d_tree, tmp_path / "voice", label_source="voice")
    with (CREMA_D / "summaryTable.csv").open(newline="") as f:
        votes = {row["FileName"]: row["VoiceVote"] for row in csv.DictReader(f)}
    single = {name: v for name, v in votes.items() if ":" not in v}
    assert len(entries) == len(single) == 6798
    letter = {"A": "ang", "D": "dis", "F": "fea", "H": "hap", "N": "neu", "S": "sad"}
    assert all(e.label == letter[single[e.key]] for e in entries)
    assert Counter(e.label for e in entries) == {
        "neu": 3897,
        "ang": 986,
        "fea": 645,
        "dis": 547,
        "sad": 370,
        "hap": 353,
    }
    summary = json.loads((tmp_path / "voice" / "summary.json").read_text())
    assert summary["voice_ties_left_out"] == 644
    assert summary["voice_agrees_with_intended"] == 3099  # 45.6 % of the kept clips
    assert all(e.extra["intended"] == e.key.split("_")[2].lower() for e in entries)


def test_wrong_trees_fail_loudly(crema_d_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match="AudioWAV is missing"):
        prepare_crema_d(tmp_path, tmp_path / "o")
    with pytest.raises(PrepError, match="needs summaryTable.csv"):
        root = tmp_path / "no_votes"
        (root / "AudioWAV").mkdir(parents=True)
        (root / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(wav_bytes(100))
        prepare_crema_d(root, tmp_path / "o", label_source="voice", allow_count_mismatch=True)

    # a copy with one clip missing and one misnamed file
    partial = tmp_path / "partial"
    (partial / "AudioWAV").mkdir(parents=True)
    names = sorted(p.name for p in (crema_d_tree / "AudioWAV").iterdir())
    for name in names[1:]:
        (partial / "AudioWAV" / name).symlink_to(crema_d_tree / "AudioWAV" / name)
    with pytest.raises(PrepError, match="(?s)clip counts differ.*ang +expected +1271 +found +1270"):
        prepare_crema_d(partial, tmp_path / "o")
    shutil.copy(crema_d_tree / "AudioWAV" / names[1], partial / "AudioWAV" / "1001_DFA_ANGRY.wav")
    with pytest.raises(PrepError, match="not named ActorID_Sentence_Emotion_Level.wav: 1001_DFA"):
        prepare_crema_d(partial, tmp_path / "o")
