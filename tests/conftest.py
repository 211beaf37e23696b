"""Shared test setup: one or two threads, the golden/real data in ../shared when present, and a
small generated corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"


def require_shared(path: Path) -> Path:
    """Skip (with the reason) when the shared folder beside the checkout is absent."""
    if not path.exists():
        pytest.skip(f"{path} not found: the golden/real data live in ../shared beside the checkout")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return require_shared(GOLDEN)


@pytest.fixture(scope="session")
def ravdess_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real RAVDESS clips in ../shared, prepared once per session by data_prep.ravdess."""
    root = require_shared(SHARED / "data" / "ravdess")
    from data_prep.ravdess import main as prepare

    out = tmp_path_factory.mktemp("ravdess")
    prepare(["--root", str(root), "--out", str(out)])
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 labelled utterances of 0.3-2.0 s (some under the 0.5 s minimum). Read-only."""
    from emotion_ssl.demo.corpus import write_synthetic_corpus

    return write_synthetic_corpus(
        tmp_path_factory.mktemp("synthetic"),
        num_files=24,
        seed=3,
        min_seconds=0.3,
        max_seconds=2.0,
        labels=["ang", "hap", "neu", "sad"],
    )
