"""IEMOCAP preparation on trees built from FORMAT.md: counts, folds, speakers, idempotence."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from corpus_trees import IemocapTree, build_iemocap

from data_prep.common import PrepError
from data_prep.iemocap import main, prepare_iemocap
from emotion_ssl.data import read_manifest
from emotion_ssl.data.labelled import select_fold


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_full_size_label_set_gives_the_standard_4class_protocol(
    full_iemocap: IemocapTree, tmp_path: Path
) -> None:
    out = tmp_path / "iemocap"
    assert main(["--root", str(full_iemocap.root), "--out", str(out), "--workers", "4"]) == 0
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 5531
    assert Counter(e.label for e in entries) == {"neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084}
    assert Counter(e.extra["code"] for e in entries)["exc"] == 1041  # merged into hap
    assert all(e.label == "hap" for e in entries if e.extra["code"] == "exc")

    # leave-one-session-out: test fold k = Session k
    sizes = [len(select_fold(entries, k, "test")) for k in range(1, 6)]
    assert sizes == [1085, 1023, 1151, 1031, 1241]
    for k in range(1, 6):
        test, train = select_fold(entries, k, "test"), select_fold(entries, k, "train")
        assert len(test) + len(train) == 5531
        assert {e.extra["session"] for e in test} == {k}
        assert not {e.speaker for e in test} & {e.speaker for e in train}

    # the true speaker: session + the utterance suffix's letter, not the dialog's letter
    for entry in entries:
        assert entry.speaker == full_iemocap.speaker(entry.key)
    assert any(e.key[5] != e.speaker[-1] for e in entries)  # the trap is exercised
    speakers = [f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM"]
    expected = Counter(
        full_iemocap.speaker(k)
        for k, c in full_iemocap.labels.items()
        if c in ("neu", "hap", "exc", "ang", "sad")
    )
    for k, speaker in enumerate(speakers, start=1):
        test = select_fold(entries, k, "test", field="speaker_fold")
        assert {e.speaker for e in test} == {speaker}
        assert len(test) == expected[speaker]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["utterances"] == 5531
    assert [f["test_utterances"] for f in summary["folds"]["fold"].values()] == sizes
    assert len(summary["folds"]["speaker_fold"]) == 10

    before = _snapshot(out)
    assert main(["--root", str(full_iemocap.root), "--out", str(out)]) == 0
    assert _snapshot(out) == before  # second run: same bytes, same mtimes


def test_all_labels_keep_every_summary_line(full_iemocap: IemocapTree, tmp_path: Path) -> None:
    entries = prepare_iemocap(full_iemocap.root, tmp_path / "all", label_set="all")
    assert len(entries) == 10039
    codes = Counter(e.extra["code"] for e in entries)
    assert codes == {
        "xxx": 2507,
        "fru": 1849,
        "neu": 1708,
        "ang": 1103,
        "sad": 1084,
        "exc": 1041,
        "hap": 595,
        "sur": 107,
        "fea": 40,
        "oth": 3,
        "dis": 2,
    }
    assert sum(e.label is None for e in entries) == 2507  # xxx: no majority, no label
    assert {e.label for e in entries if e.label} == set(codes) - {"xxx"}


def _small_tree(root: Path) -> IemocapTree:
    codes = ["neu", "exc", "ang", "sad", "fru", "xxx", "hap", "neu"]
    return build_iemocap(root, [codes[s:] + codes[:s] for s in range(5)])


def test_a_modified_release_fails_loudly_unless_allowed(tmp_path: Path) -> None:
    tree = _small_tree(tmp_path / "IEMOCAP_full_release")
    with pytest.raises(PrepError, match="(?s)summary-line counts differ.*--allow-count-mismatch"):
        prepare_iemocap(tree.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on failure

    entries = prepare_iemocap(tree.root, tmp_path / "out", allow_count_mismatch=True)
    assert len(entries) == 5 * 6  # neu exc ang sad hap neu per session
    assert {e.label for e in entries} == {"neu", "hap", "ang", "sad"}
    e = entries[0]
    assert e.num_samples == 160 and e.sample_rate == 16000 and e.corpus == "iemocap"
    assert Path(e.path).is_file() and os.path.isabs(e.path)
    assert e.extra["dialog"] == e.key.rsplit("_", 1)[0]


def test_wrong_trees_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = _small_tree(tmp_path / "release" / "IEMOCAP_full_release")
    # the parent folder: a hint names the right one
    code = main(["--root", str(tmp_path / "release"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "is not an IEMOCAP_full_release folder" in err and "did you mean" in err

    # a missing wav of a labelled utterance
    missing = next(tree.root.glob("Session3/sentences/wav/*/*.wav"))
    missing.unlink()
    with pytest.raises(PrepError, match=f"(?s)have no wav file.*{missing.name}"):
        prepare_iemocap(tree.root, tmp_path / "o", allow_count_mismatch=True, label_set="all")

    # a broken summary line is reported with file and line
    label_file = next(tree.root.glob("Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"))
    label_file.write_text(label_file.read_text() + "\n[1.0 - x]\tSes02F_impro01_F099\tneu\n")
    with pytest.raises(PrepError, match="Ses02F_impro01.txt:\\d+: not a summary line"):
        prepare_iemocap(tree.root, tmp_path / "o", allow_count_mismatch=True)

    # a session that is missing altogether
    (tree.root / "Session5" / "dialog" / "EmoEvaluation").rename(tree.root / "moved")
    with pytest.raises(PrepError, match="Session5/dialog/EmoEvaluation is missing"):
        prepare_iemocap(tree.root, tmp_path / "o", allow_count_mismatch=True)
