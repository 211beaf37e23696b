"""Multi-process launches: the command every rank re-runs, and a watch on ranks that never start.

Lightning's own launcher (`--trainer.devices N`, no torchrun or SLURM around it) starts ranks
1..N-1 by re-running the process's command line (`sys.argv`) with `LOCAL_RANK` set. Two things
follow, both handled here:

- the command line must be the one the user ran (`emotion-ssl pretrain ...`), also when the
  command is called from Python (`emotion_ssl.cli.main([...])`): `rank_command`;
- a rank that exits before it joins the process group leaves rank 0 waiting for it until the
  30-minute gloo/NCCL timeout (Lightning's own watcher only reacts to non-zero exit codes, every
  5 s). `watch_rank_startup` polls the started ranks until the group has formed and ends the run
  at once, with one line that names the rank, if one of them exits first.

torchrun and SLURM's `srun` start every rank themselves (Lightning detects them from the
environment); they tear the job down when a rank fails.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist


@contextmanager
def rank_command(command: str, args: list[str]) -> Iterator[None]:
    """Make `sys.argv` read `<program> <command> <args>` while the block runs.

    The program (sys.argv[0]) stays: the installed `emotion-ssl` script, or the module run with
    `python -m emotion_ssl`. Lightning re-runs exactly this line for every other rank."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "emotion-ssl", command, *args]
    try:
        yield
    finally:
        sys.argv = saved


def _children(trainer: Any) -> list[Any]:
    """The rank processes Lightning's launcher started on this node (Popen objects)."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    return list(getattr(launcher, "procs", None) or [])


def stop_started_ranks(trainer: Any) -> None:
    """Kill the ranks this process started (when it fails itself, so none is left waiting)."""
    for proc in _children(trainer):
        if proc.poll() is None:
            proc.kill()


@contextmanager
def stop_ranks_on_failure(trainers: list[Any]) -> Iterator[None]:
    """If the block raises, kill the ranks started by any trainer in `trainers` (filled while
    the block runs), so that none of them is left waiting for this process."""
    try:
        yield
    except BaseException:
        for trainer in trainers:
            stop_started_ranks(trainer)
        raise


class RankStartupWatch(threading.Thread):
    """Until the process group forms, end the run if a rank started by this process exits.

    Runs in rank 0 (the only process that starts others); a daemon thread, so it never keeps
    the process alive. `timeout_s` bounds the watch itself, not the run.
    """

    def __init__(self, trainer: Any, poll_s: float = 0.5, timeout_s: float = 3600.0) -> None:
        super().__init__(daemon=True, name="emotion-ssl-rank-startup-watch")
        self.trainer = trainer
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.finished = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.finished.is_set() and time.monotonic() - start < self.timeout_s:
            if dist.is_available() and dist.is_initialized():
                return  # every rank joined; Lightning's watcher covers later failures
            for rank, proc in enumerate(_children(self.trainer), start=1):
                code = proc.poll()
                if code is not None:
                    self._fail(rank, proc.pid, code)
            self.finished.wait(self.poll_s)

    def _fail(self, rank: int, pid: int, code: int) -> None:
        command = " ".join(sys.argv)
        print(
            f"error: rank {rank} (pid {pid}) exited with code {code} before joining the process "
            f"group, so the run cannot start; its own messages are above. Every rank runs "
            f"`{command}`: run it with `--trainer.devices 1` to see the problem in one process",
            file=sys.stderr,
            flush=True,
        )
        stop_started_ranks(self.trainer)
        os._exit(1)  # the main thread is blocked inside the rendezvous: end the process here


def watch_rank_startup(trainer: Any) -> RankStartupWatch:
    """Start a `RankStartupWatch` for this trainer (harmless for a single-process run)."""
    watch = RankStartupWatch(trainer)
    watch.start()
    return watch
