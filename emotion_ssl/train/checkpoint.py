"""Checkpoints that are never left half-written, and a `last.ckpt` that is never behind."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from emotion_ssl.utils.outputs import make_readable

LAST = "last.ckpt"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash
    mid-write leaves the previous file at `path` untouched. The file gets the mode the
    user's umask gives new files (the temporary is private while it is written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
"""What `atomic_torch_save` names its temporaries: `.NAME.` + mkstemp's 8 characters + `.tmp`."""


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a killed `atomic_torch_save` left in `folder` (only files named
    like them, beside a `.ckpt`/`.pt` name); returns what was removed. Call it when a run
    starts, before anything saves into the folder."""
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        name = path.name
        if path.is_file() and _TEMPORARY.fullmatch(name) and (".ckpt." in name or ".pt." in name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with `atomic_torch_save` for local paths.

    Lightning saves a step's checkpoint, then `last.ckpt`: a run killed between the two (a
    base model's save takes seconds) would keep a `last.ckpt` one save behind. So when a
    `last.ckpt` already sits beside a new checkpoint, it is first pointed at the new file
    (a hard link moved into place atomically); Lightning's own write of `last.ckpt` follows.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        if "://" in str(path):  # remote: Lightning's own transactional write
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
        target = Path(path)
        last = target.with_name(LAST)
        if target.name != LAST and last.is_file():
            link = target.with_name(f".{LAST}.{os.getpid()}.link")
            try:
                link.unlink(missing_ok=True)
                os.link(target, link)
                os.replace(link, last)
            except OSError:  # no hard links here: Lightning's write of last.ckpt follows
                link.unlink(missing_ok=True)
