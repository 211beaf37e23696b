"""Fixtures for the data tests: one thread, a small synthetic corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from emotion_ssl.data import write_synthetic_corpus


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 labelled utterances of 0.3-2.0 s (some under the 0.5 s minimum). Read-only."""
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("synthetic"),
        num_files=24,
        seed=3,
        min_seconds=0.3,
        max_seconds=2.0,
        labels=["ang", "hap", "neu", "sad"],
    )
