"""Checkpoints that are never left half-written, and a `last.ckpt` that is never behind."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from emotion_ssl.utils.outputs import atomic_torch_save

__all__ = ["LAST", "AtomicCheckpointIO", "atomic_torch_save", "remove_stale_temporaries"]

LAST = "last.ckpt"


_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
"""What `atomic_write` names its temporaries: `.NAME.` + mkstemp's 8 characters + `.tmp`."""


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
