"""End to end through the real CLI: a tiny pretraining on generated audio files, and resume."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_ssl.cli import main, pretrain
from emotion_ssl.demo.corpus import write_synthetic_corpus
from emotion_ssl.train.callbacks import LossCurves

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "pretrain" / "tiny.yaml"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_files=24, seed=0)


def read_losses(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "losses.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_thirty_step_tiny_pretraining_through_the_cli(manifest: Path, tmp_path: Path) -> None:
    """`emotion-ssl pretrain -c recipes/pretrain/tiny.yaml` as a user runs it: frame loss falls."""
    cmd = [
        sys.executable,
        "-m",
        "emotion_ssl.cli",
        "pretrain",
        "-c",
        str(TINY),
        "--data.train_manifest",
        str(manifest),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "pretrain" / "version_0"
    rows = read_losses(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first = sum(r["train/frame_loss"] for r in rows[:5]) / 5
    last = sum(r["train/frame_loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert (run / "loss_curves.png").stat().st_size > 10_000
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == [
        "epoch=1-step=10.ckpt",
        "epoch=2-step=20.ckpt",
        "epoch=3-step=30.ckpt",
        "last.ckpt",
    ]


def _run(manifest: Path, root: Path, extra: list[str]) -> list[dict[str, float]]:
    cli = pretrain(
        [
            "-c",
            str(TINY),
            "--data.train_manifest",
            str(manifest),
            "--data.max_tokens",
            "64000",  # several batches per epoch, so step 7 is mid-epoch
            "--trainer.max_steps",
            "14",
            "--checkpoint.every_n_train_steps",
            "7",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(root),
            *extra,
        ]
    )
    curves = next(c for c in cli.trainer.callbacks if isinstance(c, LossCurves))
    return curves.rows


def test_resume_repeats_the_uninterrupted_run(manifest: Path, tmp_path: Path) -> None:
    full = _run(manifest, tmp_path / "full", [])
    ckpt = next((tmp_path / "full").rglob("*step=7.ckpt"))
    resumed = _run(manifest, tmp_path / "resumed", ["--ckpt_path", str(ckpt)])
    after = [r for r in resumed if r["step"] > 7]
    expected = [r for r in full if r["step"] > 7]
    assert [r["step"] for r in after] == [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    for got, want in zip(after, expected, strict=True):
        for key in ("train/loss", "train/frame_loss", "train/utterance_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (got["step"], key)


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert main([]) == 0
    assert "pretrain" in capsys.readouterr().out


def test_commands_only_parse_and_take_their_defaults_from_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`extract` and `evaluate` hand the library its own defaults (never retyped in argparse):
    the stand-ins below see exactly what a caller of the library gets by default."""
    import functools
    import inspect
    from collections.abc import Callable

    from emotion_ssl.export import extract
    from emotion_ssl.train import evaluate

    calls: dict[str, tuple[tuple, dict]] = {}

    class Done:
        summary = ""

    def fake(name: str, real: Callable[..., object], result: object) -> Callable[..., object]:
        @functools.wraps(real)  # the real signature, which the CLI reads its defaults from
        def record(*args: object, **kwargs: object) -> object:
            calls[name] = (args, kwargs)
            return result

        return record

    real_extract, real_evaluate = extract.extract_to_folder, evaluate.evaluate
    monkeypatch.setattr(extract, "extract_to_folder", fake("extract", real_extract, Done()))
    monkeypatch.setattr(evaluate, "evaluate", fake("evaluate", real_evaluate, {"feature_sets": {}}))
    monkeypatch.setattr(evaluate, "summary", lambda results: "")
    assert main(["extract", "--encoder", "e", "--manifest", "m.jsonl", "--out", "o"]) == 0
    assert main(["evaluate", "--encoder", "e", "--data", "m.jsonl", "--out", "o"]) == 0

    args, kwargs = calls["extract"]
    assert args[3] == extract.FOLDER_CONFIG
    defaults = inspect.signature(real_extract).parameters
    for name in ("format", "shard_size", "overwrite"):
        assert kwargs[name] == defaults[name].default, name
    args, kwargs = calls["evaluate"]
    defaults = inspect.signature(real_evaluate).parameters
    for name in ("folds", "fold_field", "baselines", "layer", "overwrite"):
        assert kwargs[name] == defaults[name].default, name
    assert kwargs["probe"] == evaluate.ProbeConfig()
