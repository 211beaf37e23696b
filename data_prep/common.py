"""What every preparation shares: parallel header reads, folds, idempotent outputs, the CLI.

A preparation reads a corpus tree, checks it against the facts it knows (counts, names),
and writes into `--out`:

    manifest.jsonl   the corpus in the project's one schema (`emotion_ssl.data.manifest`)
    summary.json     counts per label, per fold and per speaker; the options used

Both are written only when their bytes change, so a second run over the same tree leaves
every file (and its mtime) as it was. Nothing in them depends on the clock or on the order
in which threads finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from emotion_ssl.data.manifest import (
    ManifestEntry,
    write_manifest,
    write_text_atomically,
)

logger = logging.getLogger("data_prep")

DEFAULT_WORKERS = min(32, 4 * (os.cpu_count() or 1))
"""Header reads are I/O bound (one small read per file), so threads beyond the cores pay off
on network filesystems."""


class PrepError(RuntimeError):
    """The tree is not what the preparation expects (wrong folder, counts, names, files)."""


@dataclass(frozen=True)
class HeaderInfo:
    """What the audio header says about one file (nothing decoded)."""

    path: Path
    num_samples: int
    sample_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True)
class HeaderFailure:
    """A file whose header could not be read; `reason` is "empty", "unreadable" or
    "truncated" (the header promises more audio than the file holds)."""

    path: Path
    reason: str
    detail: str


def read_header(path: Path) -> HeaderInfo | HeaderFailure:
    """The header of one file, or why there is none. Never raises for a bad file."""
    try:
        if path.stat().st_size == 0:
            return HeaderFailure(path, "empty", "0-byte file")
        info = sf.info(str(path))
    except Exception as e:  # one bad file must never stop a scan of thousands
        return HeaderFailure(path, "unreadable", f"{type(e).__name__}: {e}".strip())
    cut = truncation(info.extra_info, info.frames / info.samplerate if info.samplerate else 0.0)
    if cut is not None:
        return HeaderFailure(path, "truncated", cut)
    return HeaderInfo(
        path=path,
        num_samples=int(info.frames),
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        format=str(info.format),
        subtype=str(info.subtype),
    )


_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def truncation(extra_info: str, seconds: float) -> str | None:
    """How a WAV file was cut short, from libsndfile's header log, or None.

    libsndfile quietly limits a data chunk that claims more bytes than the file holds (its
    log says `data : 96000 (should be 32000)`) and reports only what is there, so a copy cut
    short would pass for a shorter recording."""
    match = _DATA_CHUNK.search(extra_info or "")
    if match is None:
        return None
    claimed, present = int(match[1]), int(match[2])
    if claimed <= present or present <= 0:
        return None
    return (
        f"the header says {seconds * claimed / present:.3f} s, the file holds {seconds:.3f} s "
        "(cut short: copy it again)"
    )


def read_headers(
    paths: Sequence[Path], num_workers: int = DEFAULT_WORKERS
) -> list[HeaderInfo | HeaderFailure]:
    """`read_header` of every path, in parallel threads, results in the order of `paths`."""
    if num_workers <= 1 or len(paths) < 2:
        return [read_header(p) for p in paths]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        # map keeps the input order, so the output never depends on thread timing
        return list(pool.map(read_header, paths, chunksize=64))


def require_headers(paths: Sequence[Path], num_workers: int, what: str) -> dict[Path, HeaderInfo]:
    """Headers of files a corpus must have; any unreadable one is a PrepError listing them."""
    infos: dict[Path, HeaderInfo] = {}
    failures: list[HeaderFailure] = []
    for result in read_headers(paths, num_workers):
        if isinstance(result, HeaderFailure):
            failures.append(result)
        elif result.num_samples == 0:
            failures.append(HeaderFailure(result.path, "empty", "no audio samples"))
        else:
            infos[result.path] = result
    if failures:
        shown = "\n".join(f"  {f.path}: {f.reason} ({f.detail})" for f in failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise PrepError(f"{len(failures)} {what} audio file(s) cannot be used:\n{shown}{more}")
    return infos


def stored_path(path: Path, out_dir: Path, relative: bool) -> str:
    """The path as the manifest stores it: absolute, or relative to the manifest folder."""
    if relative:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    return os.path.abspath(path)  # normalised ("a/../b" -> "b"), symlinks kept


def entry_from_header(
    info: HeaderInfo,
    key: str,
    out_dir: Path,
    *,
    corpus: str,
    speaker: str | None,
    label: str | None,
    relative: bool,
    extra: dict[str, Any] | None = None,
) -> ManifestEntry:
    return ManifestEntry(
        key=key,
        path=stored_path(info.path, out_dir, relative),
        num_samples=info.num_samples,
        sample_rate=info.sample_rate,
        duration=round(info.duration, 6),
        corpus=corpus,
        speaker=speaker,
        label=label,
        extra=dict(extra or {}),
    )


def deal_folds(speakers: Iterable[str], num_folds: int) -> dict[str, int]:
    """Speaker -> fold 1..num_folds, dealt round-robin in the given order.

    Every speaker lands in exactly one fold, so training and test sides of any fold share
    no speaker. The caller chooses the order (e.g. alternating genders) to balance folds.
    """
    ordered = list(dict.fromkeys(speakers))
    if not 1 < num_folds <= len(ordered):
        raise PrepError(f"need 2 <= num_folds <= {len(ordered)} speakers, got {num_folds}")
    return {speaker: i % num_folds + 1 for i, speaker in enumerate(ordered)}


def fold_summary(entries: Sequence[ManifestEntry], field: str) -> dict[str, dict[str, Any]]:
    """Per fold value: test-side utterances, labels and speakers."""
    folds: dict[str, dict[str, Any]] = {}
    for value in sorted({e.extra[field] for e in entries}):
        members = [e for e in entries if e.extra[field] == value]
        folds[str(value)] = {
            "test_utterances": len(members),
            "labels": dict(sorted(Counter(str(e.label) for e in members).items())),
            "speakers": sorted({str(e.speaker) for e in members}),
        }
    return folds


def corpus_summary(
    entries: Sequence[ManifestEntry],
    *,
    corpus: str,
    options: dict[str, Any],
    fold_fields: Sequence[str] = (),
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A deterministic description of a prepared corpus (no paths or times inside)."""
    seconds = sum(e.duration for e in entries)
    return {
        "corpus": corpus,
        "options": options,
        "utterances": len(entries),
        "labelled": sum(e.label is not None for e in entries),
        "hours": round(seconds / 3600, 4),
        "min_seconds": round(min((e.duration for e in entries), default=0.0), 4),
        "max_seconds": round(max((e.duration for e in entries), default=0.0), 4),
        "labels": dict(sorted(Counter(str(e.label) for e in entries).items())),
        "speakers": len({e.speaker for e in entries}),
        "folds": {field: fold_summary(entries, field) for field in fold_fields},
        **(notes or {}),
    }


def write_json(path: Path, data: Any) -> bool:
    """Pretty JSON, written only when it changes. Returns whether it was written."""
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    return write_text_atomically(path, text, skip_unchanged=True)


def write_prepared(
    out_dir: Path, entries: Sequence[ManifestEntry], summary: dict[str, Any]
) -> Path:
    """Write manifest.jsonl and summary.json into `out_dir` (untouched when unchanged)."""
    manifest = out_dir / "manifest.jsonl"
    before = manifest.read_bytes() if manifest.is_file() else None
    write_manifest(manifest, entries, skip_unchanged=True)
    changed = before != manifest.read_bytes()
    changed |= write_json(out_dir / "summary.json", summary)
    logger.info(
        "%s: %d utterances (%s)",
        manifest,
        len(entries),
        "written" if changed else "unchanged, nothing rewritten",
    )
    return manifest


def check_counts(
    found: dict[str, int], expected: dict[str, int], what: str, allow_mismatch: bool
) -> None:
    """Compare counts with the documented ones; a mismatch is a PrepError unless allowed."""
    rows = [
        (name, expected.get(name), found.get(name, 0))
        for name in sorted(set(expected) | set(found))
        if expected.get(name) != found.get(name, 0)
    ]
    if not rows:
        return
    table = "\n".join(
        f"  {name:<16} expected {exp!s:>6}  found {got:>6}" for name, exp, got in rows
    )
    message = f"{what} counts differ from the documented release:\n{table}"
    if not allow_mismatch:
        raise PrepError(
            f"{message}\n(wrong or incomplete tree? pass --allow-count-mismatch to prepare a "
            "partial or modified copy anyway)"
        )
    logger.warning("%s", message)


def base_parser(
    description: str, root_help: str, root_required: bool = True
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=root_required, help=root_help)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="threads reading audio headers"
    )
    parser.add_argument(
        "--relative-paths",
        action="store_true",
        help="store audio paths relative to the output folder (default: absolute)",
    )
    return parser


def run_main(
    prepare: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> int:
    """Parse, run, and turn a PrepError into one clear message and exit status 1."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepare(args)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
