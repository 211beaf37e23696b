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
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from emotion_ssl.data.audio import AudioReadError

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
            entry = _parse_record(record, manifest_dir, where)
            if entry.key in first_line_of_key:
                raise ManifestError(
                    f"{where}: duplicate key {entry.key!r} (first seen on line "
                    f"{first_line_of_key[entry.key]})"
                )
            first_line_of_key[entry.key] = line_no
            entries.append(entry)
    return entries


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    """Write `entries` as a JSONL manifest, atomically.

    Paths are written as stored in each entry (use `entry_from_audio_file(..., root=...)`
    for paths relative to the manifest folder). The file is written next to its final
    name and moved into place with `os.replace`, so a reader never sees half a manifest
    and a crash leaves the previous version intact.

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


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
