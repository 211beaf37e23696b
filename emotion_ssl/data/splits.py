"""Validation hold-outs: whole speakers by default, so the chosen epoch is not flattered.

A stratified hold-out over the same speakers lets a model pick the epoch that best recognises
voices it trains on, while the test fold holds other speakers. Holding out whole speakers makes
the validation score estimate what the test measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ValidSplit = Literal["speaker", "class"]


@dataclass(frozen=True)
class Holdout:
    """train, valid: sorted item indices; by: the split really made ("class" when whole
    speakers could not be held out)."""

    train: np.ndarray
    valid: np.ndarray
    by: ValidSplit


def holdout(
    labels: Sequence[object],
    speakers: Sequence[object | None] | None,
    fraction: float,
    seed: int,
    by: ValidSplit = "speaker",
) -> Holdout:
    """About `fraction` of the items held out for validation (seeded).

    by="speaker": whole speakers, in a seeded order, move to validation until their clips
    reach round(fraction * N). A speaker is skipped when moving it would take the last
    training clip of one of its classes away; at least one speaker always stays. When no
    speaker can move (speakers missing, fewer than 2, each the only voice of a class), the
    split falls back to by="class".
    by="class": about `fraction` of each label's items (stratified; a class of one stays).
    """
    if by not in ("speaker", "class"):
        raise ValueError(f"valid_split must be 'speaker' or 'class', got {by!r}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    if fraction > 0 and by == "speaker" and _speakers_known(speakers):
        assert speakers is not None
        held = _speaker_holdout(labels, [str(s) for s in speakers], fraction, rng)
        if held:
            return _result(n, held, "speaker")
        rng = np.random.default_rng(seed)  # the class split draws as if asked for directly
    if fraction > 0:
        held = _class_holdout(labels, fraction, rng)
    return _result(n, held, "class")


def _speakers_known(speakers: Sequence[object | None] | None) -> bool:
    return speakers is not None and all(s not in (None, "") for s in speakers)


def _speaker_holdout(
    labels: Sequence[object], speakers: list[str], fraction: float, rng: np.random.Generator
) -> list[int]:
    names = sorted(set(speakers))
    if len(names) < 2:
        return []
    index_of: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        index_of.setdefault(s, []).append(i)
    left: dict[object, int] = {}  # training clips per class
    for label in labels:
        left[label] = left.get(label, 0) + 1
    target = int(round(fraction * len(labels)))
    held: list[int] = []
    kept_speakers = len(names)
    for i in rng.permutation(len(names)):
        if len(held) >= target or kept_speakers == 1:
            break
        members = index_of[names[i]]
        taken: dict[object, int] = {}
        for j in members:
            taken[labels[j]] = taken.get(labels[j], 0) + 1
        if any(left[label] - count < 1 for label, count in taken.items()):
            continue  # the last training voice of one of its classes stays
        for label, count in taken.items():
            left[label] -= count
        held.extend(members)
        kept_speakers -= 1
    return held


def _class_holdout(
    labels: Sequence[object], fraction: float, rng: np.random.Generator
) -> list[int]:
    by_label: dict[object, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    try:
        keys = sorted(by_label)  # type: ignore[type-var]
    except TypeError:  # mixed types (e.g. None among names)
        keys = sorted(by_label, key=str)
    held: list[int] = []
    for label in keys:
        members = rng.permutation(by_label[label])
        count = int(round(fraction * len(members))) if len(members) > 1 else 0
        held.extend(int(i) for i in members[:count])
    return held


def _result(n: int, held: list[int], by: ValidSplit) -> Holdout:
    valid = np.sort(np.array(held, dtype=np.int64))
    train = np.setdiff1d(np.arange(n, dtype=np.int64), valid)
    return Holdout(train, valid, by)
