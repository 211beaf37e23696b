"""Any labelled corpus listed in a CSV, TSV or JSONL table -> manifest with folds.

    python -m data_prep.table --table /data/emodb/labels.csv --root /data/emodb/wav \\
        --out manifests/emodb --corpus emodb

The table has one row per utterance with at least an audio path column; by default the
columns are `path`, `label` and `speaker` (rename with --path-column, --label-column,
--speaker-column). Relative paths are resolved against --root (default: the table's
folder). Optional columns: --key-column (default key: the path without its suffix),
--fold-column (kept as the `fold` field). Every other column is kept as an extra field.
An empty label means unlabelled.

Folds: taken from --fold-column when given; otherwise, when there is a speaker column,
speakers (sorted) are dealt round-robin into --num-folds speaker-independent folds.

Every row's audio header is read (in parallel threads). A missing or unreadable file is an
error listing them, unless --skip-unreadable, which leaves them out and lists them in
report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.common import (
    HeaderFailure,
    PrepError,
    base_parser,
    corpus_summary,
    deal_folds,
    entry_from_header,
    logger,
    read_headers,
    run_main,
    write_json,
    write_prepared,
)
from emotion_ssl.data.manifest import SCHEMA_FIELDS, ManifestEntry


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv, .tsv or .jsonl table as dicts."""
    if not path.is_file():
        raise PrepError(f"--table {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepError(f"{path}:{line_no}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise PrepError(f"{path}:{line_no}: expected a JSON object")
            rows.append(row)
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def prepare_table(
    table: Path,
    out_dir: Path,
    *,
    root: Path | None = None,
    corpus: str | None = None,
    path_column: str = "path",
    label_column: str | None = "label",
    speaker_column: str | None = "speaker",
    key_column: str | None = None,
    fold_column: str | None = None,
    num_folds: int = 5,
    skip_unreadable: bool = False,
    relative: bool = False,
    num_workers: int = 8,
) -> list[ManifestEntry]:
    rows = read_table(table)
    if not rows:
        raise PrepError(f"{table} has no rows")
    root = root if root is not None else table.parent
    corpus = corpus or table.stem
    columns = set().union(*(row.keys() for row in rows))
    for option, column in (
        ("--path-column", path_column),
        ("--key-column", key_column),
        ("--fold-column", fold_column),
    ):
        if column is not None and column not in columns:
            raise PrepError(f"{table}: no column {column!r} ({option}); columns: {sorted(columns)}")
    label_column = label_column if label_column in columns else None
    speaker_column = speaker_column if speaker_column in columns else None
    if label_column is None:
        logger.warning("%s: no label column; every entry is unlabelled", table)

    paths: list[Path] = []
    for line_no, row in enumerate(rows, start=2):
        value = _text(row.get(path_column))
        if value is None:
            raise PrepError(f"{table}: row {line_no - 1} has an empty {path_column!r}")
        path = Path(value)
        paths.append(path if path.is_absolute() else root / path)

    results = read_headers(paths, num_workers)
    failures = [r for r in results if isinstance(r, HeaderFailure)]
    if failures and not skip_unreadable:
        shown = "\n".join(f"  {f.path}: {f.reason} ({f.detail})" for f in failures[:10])
        raise PrepError(
            f"{len(failures)} audio file(s) listed in {table} cannot be read:\n{shown}\n"
            "(pass --skip-unreadable to leave them out)"
        )

    speakers = sorted({s for row in rows if (s := _text(row.get(speaker_column or "")))})
    fold_of: dict[str, int] = {}
    if fold_column is None and speakers:
        fold_of = deal_folds(speakers, num_folds)
    used = {path_column, label_column, speaker_column, key_column}
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, HeaderFailure):
            continue
        key = _text(row.get(key_column)) if key_column else None
        if key is None:
            raw = Path(str(row[path_column]).strip())
            key = raw.with_suffix("").as_posix()
        if key in seen:
            raise PrepError(f"{table}: duplicate key {key!r}")
        seen.add(key)
        speaker = _text(row.get(speaker_column)) if speaker_column else None
        extra = {
            name: value
            for name, value in row.items()
            if name not in used and name not in SCHEMA_FIELDS and name != fold_column
        }
        if fold_column is not None:
            fold = _text(row.get(fold_column))
            extra["fold"] = int(fold) if fold is not None and fold.isdigit() else fold
        elif speaker is not None:
            extra["fold"] = fold_of[speaker]
        entries.append(
            entry_from_header(
                result,
                key,
                out_dir,
                corpus=corpus,
                speaker=speaker,
                label=_text(row.get(label_column)) if label_column else None,
                relative=relative,
                extra=extra,
            )
        )
    has_folds = bool(entries) and all("fold" in e.extra for e in entries)
    summary = corpus_summary(
        entries,
        corpus=corpus,
        options={
            "path_column": path_column,
            "label_column": label_column,
            "speaker_column": speaker_column,
            "fold_column": fold_column,
            "num_folds": None if fold_column else num_folds,
            "relative_paths": relative,
        },
        fold_fields=("fold",) if has_folds else (),
        notes={"rows": len(rows), "unreadable_left_out": len(failures)},
    )
    write_prepared(out_dir, entries, summary)
    write_json(
        out_dir / "report.json",
        {
            "table": str(table),
            "unreadable": [
                {"path": str(f.path), "reason": f.reason, "detail": f.detail} for f in failures
            ],
        },
    )
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        __doc__ or "",
        "folder the table's relative paths start from (default: the table's folder)",
        root_required=False,
    )
    parser.add_argument("--table", type=Path, required=True, help=".csv, .tsv or .jsonl")
    parser.add_argument("--corpus", help="corpus name (default: the table's file name)")
    parser.add_argument("--path-column", default="path")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--speaker-column", default="speaker")
    parser.add_argument("--key-column", default=None)
    parser.add_argument("--fold-column", default=None)
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--skip-unreadable", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def prepare(args: argparse.Namespace) -> None:
        prepare_table(
            args.table,
            args.out,
            root=args.root,
            corpus=args.corpus,
            path_column=args.path_column,
            label_column=args.label_column,
            speaker_column=args.speaker_column,
            key_column=args.key_column,
            fold_column=args.fold_column,
            num_folds=args.num_folds,
            skip_unreadable=args.skip_unreadable,
            relative=args.relative_paths,
            num_workers=args.workers,
        )

    return run_main(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
