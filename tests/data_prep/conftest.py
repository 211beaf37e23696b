"""Fixtures for the preparation tests: miniature corpus trees built once per session.

RAVDESS is read straight from the real clips in ../shared/data/ravdess.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from corpus_trees import (
    CREMA_D,
    PLACEHOLDER_RATE,
    IemocapTree,
    build_iemocap,
    crema_d_durations,
    crema_d_names,
    full_size_codes,
    wav_bytes,
)

from tests.conftest import require_shared


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def full_iemocap(tmp_path_factory: pytest.TempPathFactory) -> IemocapTree:
    """A full-size IEMOCAP label set (10 039 utterances, 160-sample wavs). Read-only."""
    return build_iemocap(
        tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release", full_size_codes()
    )


@pytest.fixture(scope="session")
def crema_d_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AudioWAV/ with a placeholder for every real clip name, plus the real summaryTable."""
    require_shared(CREMA_D)
    root = tmp_path_factory.mktemp("crema") / "CREMA-D"
    audio = root / "AudioWAV"
    audio.mkdir(parents=True)
    durations = crema_d_durations()
    for name in crema_d_names():
        frames = round(durations[name] * PLACEHOLDER_RATE)
        (audio / f"{name}.wav").write_bytes(wav_bytes(frames, PLACEHOLDER_RATE))
    processed = root / "processedResults"
    processed.mkdir()
    (processed / "summaryTable.csv").write_bytes((CREMA_D / "summaryTable.csv").read_bytes())
    return root
