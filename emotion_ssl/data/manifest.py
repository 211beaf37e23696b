"""The one manifest schema, shared by data preparation, training and evaluation.

A manifest is a JSONL file: one JSON object per line, one line per utterance::

    {"key": "Ses01F_impro01_F000", "path": "wav/Ses01F_impro01_F000.wav", "num_samples": 35840,
     "sample_rate": 16000, "duration": 2.24, "speaker": "Ses01F", "label": "neu",
     "corpus": "iemocap", "session": 1}

Fields:
    key          str, unique within the manifest
    path         str; a relative path is resolved against the manifest file's folder
    num_samples  int, frames at the file's native rate
    sample_rate  int, the file's native rate in Hz
    duration     float seconds (num_samples / sample_rate)
    speaker      str or null (the field must be present)
    label        str or null, may be absent (unlabelled)
    corpus       str
Any other field (a fold, a transcript, segment times...) is kept in `ManifestEntry.extra`
and written back unchanged, so later tools can add fields without breaking readers.

EmoBox (https://github.com/emo-box/EmoBox) metadata files are JSONL too, with other names:

    EmoBox field   this schema     notes
    key            key
    wav            path            relative paths resolve against `data_root`
    length         duration        seconds
    num_frame      num_samples     a float in EmoBox files; rounded; else length * sample_rate
    sample_rate    sample_rate
    emo            label           kept as written (apply EmoBox's label_map.json yourself)
    dataset        corpus
    speaker        speaker         not an EmoBox field; null when absent
    channel, task, type            kept in `extra`

`read_emobox_manifest` reads such a file (e.g. `iemocap/fold_1/iemocap_test_fold_1.jsonl`)
and `write_emobox_manifest` writes one, so a prepared corpus can go to EmoBox's tools and
EmoBox's published folds can come here. Segment entries (`start_time`/`end_time`) and
feature entries (`type` other than "raw") are refused: this project reads whole audio files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from emotion_ssl.data.audio import AudioReadError
from emotion_ssl.utils.outputs import atomic_write

SCHEMA_FIELDS = (
    "key",
    "path",
    "num_samples",
    "sample_rate",
    "duration",
    "speaker",
    "label",
    "corpus",
)
"""Top-level fields with a fixed meaning; every other field goes to `extra`."""


class ManifestError(ValueError):
    """A manifest line breaks the schema; the message starts with `file:line:`."""


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance of a manifest (see the module docstring for the schema)."""

    key: str
    path: str
    """Absolute after `read_manifest`; may be relative (to the manifest folder) before writing."""
    num_samples: int
    sample_rate: int
    duration: float
    corpus: str
    speaker: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest line as a dict: schema fields first, then the extra fields."""
        clash = sorted(set(self.extra) & set(SCHEMA_FIELDS))
        if clash:
            raise ValueError(f"entry {self.key!r}: extra fields {clash} shadow schema fields")
        record: dict[str, Any] = {
            "key": self.key,
            "path": self.path,
            "num_samples": self.num_samples,
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "speaker": self.speaker,
        }
        if self.label is not None:
            record["label"] = self.label
        record["corpus"] = self.corpus
        record.update(self.extra)
        return record


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python; `true` is never a valid count
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_record(record: Any, manifest_dir: Path, where: str) -> ManifestEntry:
    """Validate one decoded JSON line; `where` is "file:line" for the error messages."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    required = ("key", "path", "num_samples", "sample_rate", "duration", "speaker", "corpus")
    missing = [name for name in required if name not in record]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")

    def bad(name: str, expected: str) -> ManifestError:
        value = record[name]
        return ManifestError(
            f"{where}: field {name!r} must be {expected}, got {value!r} ({type(value).__name__})"
        )

    for name in ("key", "path", "corpus"):
        if not isinstance(record[name], str) or not record[name]:
            raise bad(name, "a non-empty string")
    if not _is_int(record["num_samples"]) or record["num_samples"] < 0:
        raise bad("num_samples", "a non-negative integer")
    if not _is_int(record["sample_rate"]) or record["sample_rate"] <= 0:
        raise bad("sample_rate", "a positive integer")
    duration = record["duration"]
    if not (_is_int(duration) or isinstance(duration, float)) or duration < 0:
        raise bad("duration", "a non-negative number")
    for name in ("speaker", "label"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise bad(name, "a string or null")

    path = Path(record["path"])
    resolved = path if path.is_absolute() else manifest_dir / path
    return ManifestEntry(
        key=record["key"],
        path=str(resolved),
        num_samples=record["num_samples"],
        sample_rate=record["sample_rate"],
        duration=float(duration),
        corpus=record["corpus"],
        speaker=record["speaker"],
        label=record.get("label"),
        extra={k: v for k, v in record.items() if k not in SCHEMA_FIELDS},
    )


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read and validate a JSONL manifest; blank lines are skipped.

    Relative audio paths are resolved against the manifest's folder, so every returned
    `entry.path` can be opened directly.

    Raises: FileNotFoundError, or ManifestError naming the file, the line and the problem
    (bad JSON, missing field, wrong type, duplicate key).
    """
    path = Path(path)
    manifest_dir = path.absolute().parent
    return _read_jsonl_entries(
        path, lambda record, where: _parse_record(record, manifest_dir, where)
    )


def _read_jsonl_entries(
    path: Path, parse: Callable[[Any, str], ManifestEntry]
) -> list[ManifestEntry]:
    """One entry per non-blank JSONL line via `parse(record, "file:line")`; bad JSON and
    duplicate keys are ManifestErrors naming the file and line."""
    entries: list[ManifestEntry] = []
    first_line_of_key: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            entry = parse(record, where)
            if entry.key in first_line_of_key:
                raise ManifestError(
                    f"{where}: duplicate key {entry.key!r} (first seen on line "
                    f"{first_line_of_key[entry.key]})"
                )
            first_line_of_key[entry.key] = line_no
            entries.append(entry)
    return entries


def write_manifest(
    path: str | Path, entries: Iterable[ManifestEntry], *, skip_unchanged: bool = False
) -> Path:
    """Write `entries` as a JSONL manifest, atomically.

    Paths are written as stored in each entry (use `entry_from_audio_file(..., root=...)`
    for paths relative to the manifest folder). The file is written next to its final
    name and moved into place with `os.replace`, so a reader never sees half a manifest
    and a crash leaves the previous version intact.

    skip_unchanged: leave an existing file with exactly these bytes untouched (its mtime
        too), so that re-running a preparation changes nothing.

    Raises: ValueError on duplicate keys or extra fields that shadow schema fields.
    """
    path = Path(path)
    lines: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            raise ValueError(f"{path}: duplicate key {entry.key!r} in the entries to write")
        seen.add(entry.key)
        lines.append(json.dumps(entry.to_json(), ensure_ascii=False))
    return _write_lines_atomically(path, lines, skip_unchanged)


def _write_lines_atomically(path: Path, lines: list[str], skip_unchanged: bool = False) -> Path:
    """Write `lines` (no newlines inside) as one file, atomically."""
    write_text_atomically(path, "".join(line + "\n" for line in lines), skip_unchanged)
    return path


def write_text_atomically(path: str | Path, text: str, skip_unchanged: bool = False) -> bool:
    """Write `text` (UTF-8) next to `path`, fsync, then move it into place with `os.replace`.

    skip_unchanged: when the file already holds exactly these bytes, leave it (and its mtime)
        alone. Returns: whether the file was written.
    """
    path = Path(path)
    data = text.encode("utf-8")
    if skip_unchanged and path.is_file() and path.read_bytes() == data:
        return False
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return True


def entry_from_audio_file(
    path: str | Path,
    key: str | None = None,
    *,
    corpus: str = "unknown",
    speaker: str | None = None,
    label: str | None = None,
    root: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> ManifestEntry:
    """Build a manifest entry from the file's header (no samples are decoded).

    key: defaults to the file name without its suffix.
    root: when given (normally the manifest's folder), the stored path is relative to it,
        which keeps a prepared corpus relocatable; otherwise the absolute path is stored.

    Raises: AudioReadError naming the file when soundfile cannot open it.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError, ValueError) as e:
        raise AudioReadError(path, f"cannot read audio header ({e})") from e
    stored = (
        os.path.relpath(path.absolute(), Path(root).absolute()) if root else str(path.absolute())
    )
    return ManifestEntry(
        key=key if key is not None else path.stem,
        path=stored,
        num_samples=int(info.frames),
        sample_rate=int(info.samplerate),
        duration=info.frames / info.samplerate,
        corpus=corpus,
        speaker=speaker,
        label=label,
        extra=dict(extra or {}),
    )


EMOBOX_FIELDS = {
    "key": "key",
    "wav": "path",
    "length": "duration",
    "num_frame": "num_samples",
    "sample_rate": "sample_rate",
    "emo": "label",
    "dataset": "corpus",
}
"""EmoBox field name -> this schema's field name (see the module docstring)."""


def _emobox_entry(record: Any, data_root: Path, corpus: str | None, where: str) -> ManifestEntry:
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in ("key", "wav", "length", "sample_rate") if name not in record]
    if missing:
        raise ManifestError(f"{where}: missing EmoBox field(s) {', '.join(missing)}")
    if "start_time" in record or "end_time" in record:
        raise ManifestError(
            f"{where}: segment entries (start_time/end_time) are not supported; "
            "cut the segments into files first"
        )
    if record.get("type", "raw") != "raw":
        raise ManifestError(f"{where}: type {record['type']!r} is not raw audio")
    rate, length = record["sample_rate"], record["length"]
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        raise ManifestError(f"{where}: sample_rate must be a positive number, got {rate!r}")
    if not isinstance(length, int | float) or isinstance(length, bool) or length < 0:
        raise ManifestError(f"{where}: length must be a non-negative number, got {length!r}")
    frames = record.get("num_frame")
    num_samples = round(frames) if isinstance(frames, int | float) else round(length * rate)
    label = record.get("emo")
    translated = {
        "key": record["key"],
        "path": str(record["wav"]),
        "num_samples": num_samples,
        "sample_rate": int(rate),
        "duration": float(length),
        "speaker": record.get("speaker"),
        "corpus": corpus or record.get("dataset") or "emobox",
    }
    if label is not None:
        translated["label"] = str(label)
    translated.update(
        {k: v for k, v in record.items() if k not in EMOBOX_FIELDS and k not in SCHEMA_FIELDS}
    )
    return _parse_record(translated, data_root, where)


def read_emobox_manifest(
    path: str | Path, data_root: str | Path | None = None, corpus: str | None = None
) -> list[ManifestEntry]:
    """Read an EmoBox metadata JSONL file as manifest entries.

    data_root: the folder EmoBox's relative `wav` paths start from (EmoBox's `data_dir`, the
        folder holding `downloads/`); defaults to the metadata file's folder.
    corpus: overrides the `dataset` field.

    Raises: ManifestError naming the file and line (missing field, segment or feature entry,
    duplicate key).
    """
    path = Path(path)
    root = Path(data_root).absolute() if data_root is not None else path.absolute().parent
    return _read_jsonl_entries(
        path, lambda record, where: _emobox_entry(record, root, corpus, where)
    )


def write_emobox_manifest(
    path: str | Path, entries: Iterable[ManifestEntry], *, skip_unchanged: bool = False
) -> Path:
    """Write entries as an EmoBox metadata JSONL file (atomically, as `write_manifest`).

    Each line: key, dataset, wav, type "raw", sample_rate, num_frame, task "category",
    length, emo (only when labelled), channel 1, speaker, then the entry's extra fields.
    """
    lines = []
    for entry in entries:
        record: dict[str, Any] = {
            "key": entry.key,
            "dataset": entry.corpus,
            "wav": entry.path,
            "type": "raw",
            "sample_rate": entry.sample_rate,
            "num_frame": entry.num_samples,
            "task": "category",
            "length": entry.duration,
        }
        if entry.label is not None:
            record["emo"] = entry.label
        record["channel"] = 1
        record["speaker"] = entry.speaker
        record.update({k: v for k, v in entry.extra.items() if k not in record})
        lines.append(json.dumps(record, ensure_ascii=False))
    return _write_lines_atomically(Path(path), lines, skip_unchanged)
