"""Test helper: run a standalone two-rank (gloo) training script in a subprocess.

A DDP launch inside pytest would start its ranks from pytest itself (Lightning's launcher
re-runs the launching command), so multi-process tests write a small script and run it; there
rank 1 is forked from rank 0 (`start_method="fork"`), saving a second import of Lightning.
The installed command's own launches are tested in tests/train/test_multiprocess_launch.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rendezvous_env(**extra: str) -> dict[str, str]:
    """This process's environment with a fresh loopback rendezvous, the repository on the
    path and one thread per rank."""
    return {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run_script(
    source: str, name: str, args: list[str], cwd: Path, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Write `source` to cwd/name and run it with `args`; it must exit 0 (stderr on failure)."""
    script = cwd / name
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=rendezvous_env(),
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result
