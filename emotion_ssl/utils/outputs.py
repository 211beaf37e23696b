"""Output folders that never lose a user's work, content identities, readable file modes.

Every command that writes a folder claims it first with `claim_output_dir`, which leaves a
record, `emotion-ssl.json`, in it: the command, what identifies its result (settings and
the content hashes of its inputs) and the names it writes. A later run into that folder:

- continues (resumes, or rewrites its own files with the same result) when the record
  matches;
- refuses, naming what differs, when the record differs, unless `overwrite`: then the
  files the earlier run recorded are removed first, and nothing else;
- refuses a non-empty folder without a record (the user's, or another program's) unless
  `overwrite`, and even then never replaces a file of a name it writes: that file is not
  ours to change.

    out = claim_output_dir("features/test", "extract", {"encoder": sha, "layer": -1},
                           outputs=["index.jsonl", "frames"], overwrite=False)
    out.status  # "new", "resumed" or "replaced"

Identities (`tensors_identity`, `file_identity`) are sha256 hex digests of content, so an
encoder changed in place at the same path never passes for the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

RECORD_NAME = "emotion-ssl.json"
RECORD_FORMAT = "emotion-ssl-output"


class OutputError(ValueError):
    """An output folder that cannot be written without losing someone's files."""


@dataclass(frozen=True)
class OutputDir:
    """A claimed output folder: `status` says whether it is new, resumed or replaced."""

    path: Path
    status: Literal["new", "resumed", "replaced"]
    record: dict[str, Any]


def _plain(value: Any) -> Any:
    """JSON-normalised (tuples -> lists, keys -> str), so records compare as read back."""
    return json.loads(json.dumps(value, default=str))


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record of an output folder, or None when it has none (or an unreadable one)."""
    record_path = Path(path) / RECORD_NAME
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def write_record(
    path: str | Path,
    command: str,
    identity: Mapping[str, Any],
    outputs: Iterable[str],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (atomically) the record of what `command` writes into folder `path`."""
    from emotion_ssl import __version__

    record = {
        "format": RECORD_FORMAT,
        "command": command,
        "identity": _plain(dict(identity)),
        "outputs": sorted(set(outputs)),
        "info": _plain(dict(info or {})),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "emotion_ssl_version": __version__,
    }
    with atomic_write(Path(path) / RECORD_NAME) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed)


def _short(value: Any) -> str:
    text = json.dumps(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a content hash: its first digits tell two apart
    return text if len(text) <= 60 else text[:57] + "..."


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def claim_output_dir(
    path: str | Path,
    command: str,
    identity: Mapping[str, Any],
    outputs: Iterable[str],
    *,
    overwrite: bool = False,
    replace_changed: bool = False,
    info: Mapping[str, Any] | None = None,
    legacy: Callable[[Path], bool] | None = None,
) -> OutputDir:
    """Make `path` this command's output folder, or raise OutputError (see the module
    docstring). `outputs`: the names (relative paths) the command writes there; `identity`:
    what must match for a rerun to continue; `info`: recorded, not compared;
    `replace_changed`: for a cache, replace its files when the identity changed (and resume
    when it did not) instead of refusing; `legacy`: tells a record-less folder written by an
    older emotion-ssl (it counts as ours, but its identity is unknown: it needs `overwrite`
    or `replace_changed`)."""
    folder = Path(path)
    outputs = sorted(set(outputs))
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose a folder to write into")
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    record = read_record(folder)
    hint = "use another folder, or --overwrite to replace what emotion-ssl wrote there"
    if record is None and legacy is not None and present and legacy(folder):
        record = {"command": command, "identity": None, "outputs": outputs}
    if record is not None:
        same = record.get("command") == command and record.get("identity") == _plain(dict(identity))
        if same and not overwrite:
            return OutputDir(folder, "resumed", record)
        if not same and not (overwrite or replace_changed):
            if record.get("identity") is None:
                what = "an earlier emotion-ssl without a record of its inputs"
            elif record.get("command") != command:
                what = f"`emotion-ssl {record.get('command')}`"
            else:
                what = f"other inputs or settings ({_differences(record['identity'], identity)})"
            raise OutputError(f"{folder} holds what was written by {what}: {hint}")
        for name in record.get("outputs", []):  # only what the record says we wrote
            _remove(folder / name)
        return OutputDir(folder, "replaced", write_record(folder, command, identity, outputs, info))
    if present and not overwrite:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise OutputError(
            f"{folder} is not empty ({shown}) and was not written by emotion-ssl: use an "
            "empty or new folder, or --overwrite to add to it (files emotion-ssl did not "
            "write are never changed)"
        )
    clash = [name for name in outputs if (folder / name).exists()]
    if clash:
        raise OutputError(
            f"{folder / clash[0]} was not written by emotion-ssl, which would replace it: move "
            "it away or use another folder"
        )
    return OutputDir(folder, "new", write_record(folder, command, identity, outputs, info))


def check_new_file(path: str | Path, overwrite: bool) -> Path:
    """A single output file: refuse to replace an existing one unless `overwrite`."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target} is a folder: give the file to write")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists: use another name, or --overwrite to replace it")
    return target


# ---------------------------------------------------------------------------- identities
def tensors_identity(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> str:
    """sha256 of a configuration and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(json.dumps(_plain(dict(config)), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # raw bytes whatever the dtype (bfloat16 has no numpy form)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def path_identity(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file in a folder (names and bytes)."""
    root = Path(path)
    if not root.is_dir():
        return file_identity(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD_NAME):
        digest.update(f"{file.relative_to(root).as_posix()}|{file_identity(file)}|".encode())
    return digest.hexdigest()


def file_identity(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- file modes
def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the umask."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return 0o666 & ~mask


def make_readable(path: str | Path) -> None:
    """Give a file written through a private temporary (mode 0600) the mode the user's
    umask gives new files, so that others on a shared server can read it as usual."""
    os.chmod(path, default_file_mode())


@contextmanager
def atomic_write(path: str | Path, suffix: str = ".tmp", sync: bool = True) -> Iterator[Path]:
    """Write a file so that a crash never leaves half of it: yields a temporary path beside
    `path` (`.NAME.XXXXXXXX` + `suffix`; give the real extension when the writer infers the
    format from it); on success the temporary is flushed to disk, given the mode the user's
    umask gives new files and moved onto `path` (`os.replace`); on any error it is removed
    and the previous file at `path` stays as it was. The one atomic writer of the package.
    sync=False skips the flush to disk, for many small files that are cheap to write again.

    >>> with atomic_write("out/config.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb") as f:  # on disk before the rename: no empty file after a crash
                os.fsync(f.fileno())
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `atomic_write`: a crash mid-write keeps the previous file."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
