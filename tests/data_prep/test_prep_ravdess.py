"""RAVDESS preparation on the real clips in ../shared/data/ravdess."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from corpus_trees import RAVDESS

from data_prep.common import PrepError
from data_prep.ravdess import main, prepare_ravdess
from emotion_ssl.data import read_manifest
from emotion_ssl.data.labelled import LabelledDataset, select_fold
from tests.conftest import require_shared


@pytest.fixture(scope="module")
def ravdess() -> Path:
    return require_shared(RAVDESS)


def test_eight_classes_with_actor_independent_folds(ravdess: Path, tmp_path: Path) -> None:
    out = tmp_path / "ravdess"
    assert main(["--root", str(ravdess), "--out", str(out), "--relative-paths"]) == 0
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 1440
    assert Counter(e.label for e in entries) == {
        "neu": 96,
        "cal": 192,
        "hap": 192,
        "sad": 192,
        "ang": 192,
        "fea": 192,
        "dis": 192,
        "sur": 192,
    }
    assert len({e.speaker for e in entries}) == 24
    assert all(e.sample_rate == 16000 for e in entries)
    assert 2.9 < min(e.duration for e in entries) < max(e.duration for e in entries) < 5.3
    assert sum(e.duration for e in entries) / 60 == pytest.approx(88.8, abs=0.05)
    first = entries[0]
    assert first.key == "03-01-01-01-01-01-01" and first.speaker == "Actor_01"
    assert first.extra == {
        "actor": 1,
        "gender": "M",
        "intensity": "normal",
        "statement": 1,
        "repetition": 1,
        "fold": 1,
    }
    assert Path(first.path).is_file()  # relative to the manifest folder, resolved on read
    assert (
        not (out / "manifest.jsonl")
        .read_text()
        .startswith('{"key": "03-01-01-01-01-01-01", "path": "/')
    )

    for k in range(1, 5):
        test, train = select_fold(entries, k, "test"), select_fold(entries, k, "train")
        assert len(test) == 360 and len(train) == 1080
        assert not {e.speaker for e in test} & {e.speaker for e in train}
        assert Counter(e.extra["gender"] for e in test) == {"F": 180, "M": 180}
    assert sorted({e.extra["actor"] for e in select_fold(entries, 1, "test")}) == [
        1,
        2,
        9,
        10,
        17,
        18,
    ]

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["--root", str(ravdess), "--out", str(out), "--relative-paths"]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    # the fold field feeds the evaluation datasets directly
    test = LabelledDataset.from_manifest(out / "manifest.jsonl", fold=2, split="test")
    assert len(test) == 360 and test.label_names == sorted(Counter(e.label for e in entries))


def test_four_classes_shared_with_iemocap(ravdess: Path, tmp_path: Path) -> None:
    entries = prepare_ravdess(ravdess, tmp_path / "r4", label_set="4class", num_folds=6)
    assert len(entries) == 672
    assert Counter(e.label for e in entries) == {"neu": 96, "hap": 192, "ang": 192, "sad": 192}
    folds = Counter(e.extra["fold"] for e in entries)
    assert folds == {k: 112 for k in range(1, 7)}  # 4 actors x 28 clips per fold


def test_wrong_trees_fail_loudly(ravdess: Path, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match="no Actor_NN sub-folders \\(did you mean --root"):
        prepare_ravdess(ravdess.parent, tmp_path / "o")
    partial = tmp_path / "partial"
    for actor in sorted(ravdess.glob("Actor_*"))[:-1]:  # Actor_24 missing
        (partial / actor.name).mkdir(parents=True)
        for clip in actor.iterdir():
            (partial / actor.name / clip.name).symlink_to(clip)
    with pytest.raises(PrepError, match="(?s)counts differ.*actors +expected +24 +found +23"):
        prepare_ravdess(partial, tmp_path / "o")
    entries = prepare_ravdess(partial, tmp_path / "o", allow_count_mismatch=True)
    assert len(entries) == 1380
    clip = next((partial / "Actor_01").iterdir())
    (partial / "Actor_02" / clip.name).symlink_to(clip.resolve())  # actor 01's clip in 02
    with pytest.raises(PrepError, match="not named MM-VV-EE-II-SS-RR-AA after their Actor_NN"):
        prepare_ravdess(partial, tmp_path / "o", allow_count_mismatch=True)
