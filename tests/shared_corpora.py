"""Test helper: subsets of the real corpora in ../shared (importable from every test folder)."""

from __future__ import annotations

from pathlib import Path


def subset_manifest(source: Path, out: Path, actors: tuple[int, ...]) -> Path:
    """The entries of `source` spoken by `actors` (RAVDESS actor numbers), as a new manifest."""
    from emotion_ssl.data.manifest import read_manifest, write_manifest

    entries = [e for e in read_manifest(source) if int(e.extra["actor"]) in actors]
    return write_manifest(out / "manifest.jsonl", entries)
