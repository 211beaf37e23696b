"""The generic labelled-table importer: CSV and JSONL, folds from speakers or a column."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from corpus_trees import wav_bytes

from data_prep.common import PrepError
from data_prep.table import main, prepare_table
from emotion_ssl.data import read_manifest
from emotion_ssl.data.labelled import select_fold


def _corpus(root: Path, speakers: int = 6, per_speaker: int = 4) -> list[dict[str, str]]:
    rows = []
    for s in range(speakers):
        for u in range(per_speaker):
            rel = f"audio/s{s}/u{u}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(wav_bytes(8000 + 100 * u))
            label = ["ang", "neu", "", "sad"][u]
            rows.append({"file": rel, "emotion": label, "spk": f"s{s}", "text": f"t{s}{u}"})
    return rows


def test_csv_with_speaker_folds_and_extra_columns(tmp_path: Path) -> None:
    rows = _corpus(tmp_path)
    table = tmp_path / "labels.csv"
    table.write_text(
        "file,emotion,spk,text\n"
        + "".join(f"{r['file']},{r['emotion']},{r['spk']},{r['text']}\n" for r in rows)
    )
    out = tmp_path / "out"
    args = [
        "--table",
        str(table),
        "--out",
        str(out),
        "--path-column",
        "file",
        "--label-column",
        "emotion",
        "--speaker-column",
        "spk",
        "--num-folds",
        "3",
        "--corpus",
        "mini",
    ]
    assert main(args) == 0
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 24
    assert entries[0].key == "audio/s0/u0" and entries[0].corpus == "mini"
    assert entries[0].extra == {"text": "t00", "fold": 1}
    assert Counter(e.label for e in entries) == {"ang": 6, "neu": 6, None: 6, "sad": 6}
    assert entries[0].num_samples == 8000 and entries[1].num_samples == 8100
    for k in (1, 2, 3):
        test, train = select_fold(entries, k, "test"), select_fold(entries, k, "train")
        assert len(test) == 8 and not {e.speaker for e in test} & {e.speaker for e in train}
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(args) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_jsonl_with_a_fold_column_and_unreadable_rows(tmp_path: Path) -> None:
    rows = _corpus(tmp_path / "data", speakers=2, per_speaker=2)
    records = [
        {
            "path": r["file"],
            "label": r["emotion"] or "neu",
            "speaker": r["spk"],
            "split_fold": i % 2 + 1,
            "id": f"utt{i}",
        }
        for i, r in enumerate(rows)
    ]
    records.append(
        {
            "path": "audio/missing.wav",
            "label": "ang",
            "speaker": "s9",
            "split_fold": 1,
            "id": "gone",
        }
    )
    table = tmp_path / "meta.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in records))
    kwargs = {"root": tmp_path / "data", "key_column": "id", "fold_column": "split_fold"}
    with pytest.raises(PrepError, match="(?s)1 audio file.*missing.wav.*--skip-unreadable"):
        prepare_table(table, tmp_path / "o", **kwargs)  # type: ignore[arg-type]
    entries = prepare_table(table, tmp_path / "o", skip_unreadable=True, **kwargs)  # type: ignore[arg-type]
    assert [e.key for e in entries] == ["utt0", "utt1", "utt2", "utt3"]
    assert [e.extra["fold"] for e in entries] == [1, 2, 1, 2]
    assert entries[0].corpus == "meta"
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [Path(r["path"]).name for r in report["unreadable"]] == ["missing.wav"]


def test_bad_tables_are_named(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("wav,label\nx.wav,neu\n")
    with pytest.raises(
        PrepError, match="no column 'path' \\(--path-column\\); columns: \\['label', 'wav'\\]"
    ):
        prepare_table(table, tmp_path / "o")
    (tmp_path / "x.wav").write_bytes(wav_bytes(100))
    table.write_text("path,label\nx.wav,neu\nx.wav,ang\n")
    with pytest.raises(PrepError, match="duplicate key 'x'"):
        prepare_table(table, tmp_path / "o")
    with pytest.raises(PrepError, match="does not exist"):
        prepare_table(tmp_path / "none.csv", tmp_path / "o")
