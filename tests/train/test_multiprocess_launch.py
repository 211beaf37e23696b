"""Two gloo ranks started through the installed `emotion-ssl` command, as docs/pretraining.md
says: Lightning's own launcher (`--trainer.devices 2`), torchrun, and SLURM's environment.

The runs pretrain the tiny recipe on real RAVDESS clips with length-bucketed batches and the
category term on. A callback from `launch_probe/` (added with `--trainer.callbacks`, found
through PYTHONPATH by every rank) records what each rank did; the test then checks that both
ranks finished every update, logged the same loss, and ended with the same teacher.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from shared_corpora import subset_manifest
from two_ranks import free_port

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "launch_probe"
BIN = Path(sys.executable).parent
STEPS = 4


def _pretrain_args(manifest: Path) -> list[str]:
    """The documented command's options: the tiny recipe, 2 devices, the category term on."""
    return [
        "pretrain",
        "-c",
        str(REPO / "recipes/pretrain/tiny.yaml"),
        "--data.train_manifest",
        str(manifest),
        "--data.labelled_manifest",
        str(manifest),
        "--data.labelled_fraction",
        "0.5",
        # RAVDESS clips are 3-5 s: uncropped, the length buckets give the ranks unequal batches
        "--data.max_sample_size",
        "96000",
        "--data.max_tokens",
        "320000",
        "--model.objective.category_weight",
        "1.0",
        "--model.objective.category_ramp_steps",
        "0",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp_find_unused_parameters_true",
        "--trainer.max_steps",
        str(STEPS),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=rank_record.RankRecord",
    ]


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROBE), str(REPO)]),
        "RANK_RECORD_DIR": str(out),
        "OMP_NUM_THREADS": "1",
    }
    for name in list(env):  # this test's own launcher decides the ranks
        if name.startswith(("SLURM_", "TORCHELASTIC_")) or name in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        ):
            env.pop(name)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def two_actor_manifest(ravdess_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Actors 1 and 2: 120 real clips, 8 emotions."""
    return subset_manifest(ravdess_manifest, tmp_path_factory.mktemp("actors"), (1, 2))


def _check_ranks(out: Path, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, record in enumerate(records):
        assert record["world_size"] == 2 and record["rank"] == rank
        # every update done, once each
        assert [s["global_step"] for s in record["steps"]] == list(range(1, STEPS + 1))
    # the same loss logged by both ranks: the mean over the global batch
    for a, b in zip(records[0]["steps"], records[1]["steps"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # the category term had anchors, and the ranks saw different batch sizes at least once
    assert max(s["num_anchors"] for s in records[0]["steps"]) > 0
    rows = [[s["rows"] for s in record["steps"]] for record in records]
    assert rows[0] != rows[1], rows
    teachers = [torch.load(out / f"teacher{r}.pt") for r in range(2)]
    assert teachers[0].keys() == teachers[1].keys()
    for key in teachers[0]:
        assert torch.equal(teachers[0][key], teachers[1][key]), key


@pytest.mark.slow
def test_lightning_launcher_two_ranks(two_actor_manifest: Path, tmp_path: Path) -> None:
    """`emotion-ssl pretrain ... --trainer.devices 2`: Lightning starts rank 1 by re-running
    the command (it used to run a bare `emotion-ssl`, and rank 0 waited forever)."""
    result = subprocess.run(
        [str(BIN / "emotion-ssl"), *_pretrain_args(two_actor_manifest)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(tmp_path, MASTER_PORT=str(free_port())),
        cwd=tmp_path,
    )
    _check_ranks(tmp_path, result)
    # the run went where rank 0 says, with one loss curve and a last checkpoint
    assert (tmp_path / "runs/pretrain/version_0/checkpoints/last.ckpt").exists()


@pytest.mark.slow
def test_torchrun_two_ranks(two_actor_manifest: Path, tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 --no-python emotion-ssl pretrain ...` (docs)."""
    torchrun = shutil.which("torchrun", path=str(BIN))
    assert torchrun is not None, "torchrun comes with torch"
    result = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "--no-python",
            str(BIN / "emotion-ssl"),
            *_pretrain_args(two_actor_manifest),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    _check_ranks(tmp_path, result)


@pytest.mark.slow
def test_slurm_environment_two_ranks(two_actor_manifest: Path, tmp_path: Path) -> None:
    """What `srun --ntasks-per-node 2 emotion-ssl pretrain ...` does: two tasks with SLURM's
    variables, each one rank (Lightning's SLURMEnvironment), started here by the test."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        slurm = {
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "emotion-ssl",
            "SLURM_NODELIST": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [str(BIN / "emotion-ssl"), *_pretrain_args(two_actor_manifest)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(tmp_path, **slurm),
                cwd=tmp_path,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    stderr = "\n".join(err[-3000:] for _, err in outputs)
    result = subprocess.CompletedProcess(args=[], returncode=max(codes), stderr=stderr)
    _check_ranks(tmp_path, result)


def test_a_rank_that_never_starts_ends_the_run(two_actor_manifest: Path, tmp_path: Path) -> None:
    """Rank 1 exits (code 0) before joining: rank 0 stops with one line instead of waiting for
    it until the 30-minute rendezvous timeout."""
    start = time.monotonic()
    result = subprocess.run(
        [str(BIN / "emotion-ssl"), *_pretrain_args(two_actor_manifest)],
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails here
        env=_env(tmp_path, MASTER_PORT=str(free_port()), RANK_RECORD_EXIT_RANK="1"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "rank 1" in errors[0] and "before joining the process group" in errors[0]
    assert "--trainer.devices 1" in errors[0]
    assert time.monotonic() - start < 240
