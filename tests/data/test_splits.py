"""Validation hold-outs: whole speakers by default, a stratified share on request."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_ssl.data.manifest import ManifestEntry
from emotion_ssl.data.splits import holdout
from emotion_ssl.train.probe import split_validation

SPEAKERS = ["a"] * 3 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2
LABELS = [0, 1, 2] + [0, 1, 2] + [0, 1, 2, 0] + [1, 2]


def _old_stratified(labels: np.ndarray, fraction: float, seed: int):
    """The hold-out used before (a share of each class over the same speakers)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    valid: list[int] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_valid = int(round(fraction * len(members))) if len(members) > 1 else 0
        valid.extend(members[:n_valid])
        train.extend(members[n_valid:])
    return np.sort(np.array(train)), np.sort(np.array(valid))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_speaker_holdout_takes_whole_speakers(seed: int) -> None:
    split = holdout(LABELS, SPEAKERS, 0.25, seed)
    assert split.by == "speaker"
    train, valid = split.train, split.valid
    train_speakers = {SPEAKERS[i] for i in train}
    valid_speakers = {SPEAKERS[i] for i in valid}
    assert valid_speakers and not train_speakers & valid_speakers
    assert sorted([*train, *valid]) == list(range(len(LABELS)))
    # speakers are added in a seeded order until round(0.25 * 12) = 3 clips are held out:
    # one speaker of 3 or 4 clips, or "d" (2 clips) and one more
    assert len(valid) >= 3
    if len(valid_speakers) == 2:
        assert "d" in valid_speakers


def test_speaker_holdout_is_seeded_and_keeps_a_training_speaker() -> None:
    first = holdout(LABELS, SPEAKERS, 0.25, 7)
    again = holdout(LABELS, SPEAKERS, 0.25, 7)
    assert np.array_equal(first.valid, again.valid)
    # even a fraction near 1 leaves one speaker to train on
    split = holdout(LABELS, SPEAKERS, 0.99, 0)
    assert len({SPEAKERS[i] for i in split.train}) == 1 and len(split.valid) > 0


def test_a_speaker_who_is_the_last_voice_of_a_class_stays() -> None:
    # "x" alone says class 3: holding it out would leave no class-3 clip to train on
    speakers = ["x", "y", "y", "z", "z"]
    labels = [3, 0, 1, 0, 1]
    for seed in range(6):
        split = holdout(labels, speakers, 0.4, seed)
        assert split.by == "speaker" and 0 in split.train
        assert {labels[i] for i in split.train} == {0, 1, 3}
    # two speakers, each the only voice of its class: no speaker can go, the classes split
    split = holdout([0, 0, 1, 1], ["a", "a", "b", "b"], 0.5, 0)
    assert split.by == "class" and len(split.valid) == 2
    assert {[0, 0, 1, 1][i] for i in split.valid} == {0, 1}


def test_class_split_is_the_old_stratified_one() -> None:
    labels = np.array(LABELS)
    for seed in range(3):
        new = split_validation(labels, 0.2, seed, SPEAKERS, "class")
        old = _old_stratified(labels, 0.2, seed)
        assert np.array_equal(new.train, old[0]) and np.array_equal(new.valid, old[1])


def test_missing_speakers_fall_back_to_the_class_split() -> None:
    labels = np.array(LABELS)
    old = _old_stratified(labels, 0.2, 0)
    for speakers in (None, [*SPEAKERS[:-1], None], ["a"] * len(LABELS)):
        split = split_validation(labels, 0.2, 0, speakers, "speaker")
        assert split.by == "class"
        assert np.array_equal(split.train, old[0]) and np.array_equal(split.valid, old[1])
    with pytest.raises(ValueError, match="valid_split"):
        holdout(LABELS, SPEAKERS, 0.2, 0, "speakers")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid_fraction"):
        holdout(LABELS, SPEAKERS, 1.0, 0)


def test_labelled_entries_split_by_speaker() -> None:
    from emotion_ssl.data.labelled import split_validation_entries

    entries = [
        ManifestEntry(
            key=f"k{i}",
            path=f"{i}.wav",
            num_samples=16000,
            sample_rate=16000,
            duration=1.0,
            corpus="t",
            speaker=s,
            label=str(label),
        )
        for i, (s, label) in enumerate(zip(SPEAKERS, LABELS, strict=True))
    ]
    train, valid = split_validation_entries(entries, 0.25, 1)
    assert {e.speaker for e in train}.isdisjoint({e.speaker for e in valid})
    assert len(train) + len(valid) == len(entries) and valid
    train_c, valid_c = split_validation_entries(entries, 0.25, 1, "class")
    # the stratified split puts the same speakers on both sides here
    assert {e.speaker for e in train_c} & {e.speaker for e in valid_c}
