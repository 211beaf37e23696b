"""Shared test setup: one or two threads, and the golden/real data in ../shared when present."""

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
