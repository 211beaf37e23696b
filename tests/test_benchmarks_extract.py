"""The extraction benchmarks' ONNX Runtime modes and profile run end to end (tiny config,
seconds-long settings, one shared export cache, nothing recorded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_benchmarks import run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


def test_extract_speed_every_backend(tmp_path: Path, cache: Path) -> None:
    out = run(
        "extract_speed.py", "--config", "tiny", "--clips", "3", "--repeats", "1",
        "--threads", "1", "--backends", "torch", "onnxruntime", "--int8",
        "--onnx-cache", str(cache), tmp_path=tmp_path,
    )  # fmt: skip
    for row in (
        "| one at a time |",
        "| onnxruntime, one at a time |",
        "| onnxruntime, batched (10 s batches), 2 workers x 1 thread |",
        "| default: `extract` (auto -> ",
        "| (not exact) onnxruntime int8 dynamic quantisation, batched (10 s batches) |",
    ):
        assert row in out, row
    assert "`--backend auto` decided: " in out


def test_extract_profile(tmp_path: Path, cache: Path) -> None:
    out = run(
        "extract_profile.py", "--config", "tiny", "--clips", "2", "--repeats", "1",
        "--threads", "1", "--top", "3", "--onnx-cache", str(cache), tmp_path=tmp_path,
    )  # fmt: skip
    assert "| torch eager |" in out and "| onnxruntime |" in out
    assert "| CNN layer 0 |" in out and "| transformer blocks |" in out
    assert "| 3 |" in out and "| 4 |" not in out
