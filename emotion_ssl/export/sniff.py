"""Tell a damaged or foreign file from a checkpoint before torch.load reads it.

torch.load reports a file of random bytes, a truncated download and a checkpoint that
pickles Python objects alike (an UnpicklingError), so the advice to load it with
--trust-pickle would be given for all three. `check_checkpoint_file` looks at the bytes first:
torch.save writes a zip archive (or, before torch 1.6, a pickle stream); anything else is not
a checkpoint, and a zip archive without its central directory was cut short.
"""

from __future__ import annotations

import zipfile
from pathlib import Path


class CheckpointFileError(ValueError):
    """A file that is not a (complete) PyTorch checkpoint; the message says which and why."""


def check_checkpoint_file(path: str | Path) -> Path:
    """Raise CheckpointFileError (or FileNotFoundError) unless `path` looks like a complete
    torch.save file; returns the path."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointFileError(f"{p} is a folder, not a checkpoint file")
    if not p.is_file():
        raise FileNotFoundError(2, "no such checkpoint file", str(p))
    with open(p, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointFileError(f"{p} is empty (0 bytes), not a checkpoint: copy it again")
    if head == b"PK\x03\x04":  # torch.save's zip archive
        if not zipfile.is_zipfile(p):
            raise CheckpointFileError(
                f"{p} is an incomplete checkpoint (its zip archive has no end, e.g. a download "
                "or copy cut short): copy it again"
            )
        return p
    if head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle stream: torch.save before torch 1.6
        return p
    raise CheckpointFileError(
        f"{p} is not a PyTorch checkpoint (it starts with bytes {head!r}, not a torch.save "
        "archive): check the path"
    )
