"""LengthBucketBatchSampler: budget, padding waste, sharding over ranks, exact resume, mixing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from emotion_ssl.data.pretrain import LengthBucketBatchSampler

MAX_TOKENS = 1_400_000


def realistic_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Emotional-speech-like durations: log-normal, median 3 s, 0.5-30 s, cropped to 20 s."""
    seconds = np.clip(np.random.default_rng(seed).lognormal(np.log(3.0), 0.6, n), 0.5, 30.0)
    return np.minimum((seconds * 16_000).astype(np.int64), 320_000)


def test_budget_is_respected_and_every_item_appears_once() -> None:
    lengths = realistic_lengths(3000)
    sampler = LengthBucketBatchSampler(lengths, MAX_TOKENS, max_batch_size=64, seed=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.num_global_batches
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= MAX_TOKENS
        assert len(batch) <= 64
    assert sorted(i for batch in batches for i in batch) == list(range(3000))


def test_padding_waste_is_small_on_a_realistic_length_distribution() -> None:
    lengths = realistic_lengths(3000)
    sampler = LengthBucketBatchSampler(lengths, MAX_TOKENS)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        padded = sum(len(b) * lengths[b].max() for b in batches)
        waste = 1.0 - lengths.sum() / padded
        assert waste < 0.03, waste  # the brief asks < 10%; sorting gives about 1%
        # and the budget is used: batches are nearly full
        assert padded / (len(batches) * MAX_TOKENS) > 0.85


def test_epochs_differ_but_each_is_reproducible_with_a_constant_batch_count() -> None:
    lengths = realistic_lengths(500)
    first = LengthBucketBatchSampler(lengths, MAX_TOKENS, seed=1)
    second = LengthBucketBatchSampler(lengths, MAX_TOKENS, seed=1)
    epochs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        batches = list(first)
        assert batches == list(second)
        assert len(batches) == len(first)
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]
    # the same items are paired differently across epochs (random tie-breaking within 0.1 s)
    mates = [{frozenset(b) for b in batches} for batches in epochs]
    assert mates[0] != mates[1]
    other_seed = LengthBucketBatchSampler(lengths, MAX_TOKENS, seed=2)
    assert list(other_seed) != epochs[0]


def test_unshuffled_sampler_is_sorted_and_epoch_independent() -> None:
    lengths = realistic_lengths(200)
    sampler = LengthBucketBatchSampler(lengths, MAX_TOKENS, shuffle=False)
    batches = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) == batches
    longest = [lengths[b].max() for b in batches]
    assert longest == sorted(longest)


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_ranks_get_equal_counts_and_disjoint_batches(num_replicas: int) -> None:
    # 65 equal items, 4 per batch: 17 batches, divisible by neither 2 nor 3
    lengths = np.full(65, 16_000)
    global_count = LengthBucketBatchSampler(lengths, 64_000, seed=3).num_global_batches
    assert global_count == 17 and global_count % num_replicas != 0

    per_rank = []
    for rank in range(num_replicas):
        sampler = LengthBucketBatchSampler(
            lengths, 64_000, seed=3, num_replicas=num_replicas, rank=rank
        )
        sampler.set_epoch(2)
        per_rank.append([tuple(b) for b in sampler])
    counts = {len(batches) for batches in per_rank}
    assert counts == {-(-17 // num_replicas)}  # every rank yields the same number of batches

    everything = [b for batches in per_rank for b in batches]
    distinct = set(everything)
    assert len(distinct) == 17  # only the padding repeats a batch
    assert len(everything) - len(distinct) == num_replicas * counts.pop() - 17
    # the distinct batches partition the items: ranks never share an item otherwise
    assert sorted(i for b in distinct for i in b) == list(range(65))


def test_ranks_with_realistic_lengths_cover_the_epoch() -> None:
    lengths = realistic_lengths(1000, seed=4)
    samplers = [
        LengthBucketBatchSampler(lengths, MAX_TOKENS, num_replicas=3, rank=r) for r in range(3)
    ]
    yielded = [list(s) for s in samplers]
    assert len({len(y) for y in yielded}) == 1
    assert {i for y in yielded for b in y for i in b} == set(range(1000))


@pytest.mark.parametrize(("num_replicas", "rank"), [(1, 0), (3, 1)])
def test_resume_yields_exactly_the_remaining_batches(num_replicas: int, rank: int) -> None:
    lengths = realistic_lengths(800, seed=7)

    def make() -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(
            lengths, MAX_TOKENS, seed=11, num_replicas=num_replicas, rank=rank
        )

    reference = make()
    reference.set_epoch(3)
    full = list(reference)
    assert len(full) > 4
    for consumed in (0, 1, 4, len(full) - 1, len(full)):
        interrupted = make()
        interrupted.set_epoch(3)
        iterator = iter(interrupted)
        head = [next(iterator) for _ in range(consumed)]
        state = interrupted.state_dict()
        assert state == {"epoch": 3, "batches_yielded": consumed}

        resumed = make()
        resumed.load_state_dict(state)
        assert head + list(resumed) == full
        assert resumed.state_dict() == {"epoch": 3, "batches_yielded": len(full)}
        assert list(resumed) == full  # the skip applies to one pass only


def test_set_epoch_to_a_new_epoch_discards_a_loaded_position() -> None:
    sampler = LengthBucketBatchSampler(realistic_lengths(300), MAX_TOKENS)
    sampler.load_state_dict({"epoch": 1, "batches_yielded": 2})
    sampler.set_epoch(1)  # same epoch: the position is kept
    assert sampler.state_dict() == {"epoch": 1, "batches_yielded": 2}
    sampler.set_epoch(2)
    assert sampler.state_dict() == {"epoch": 2, "batches_yielded": 0}
    assert len(list(sampler)) == len(sampler)


def test_bad_states_and_arguments_are_rejected() -> None:
    lengths = realistic_lengths(100)
    sampler = LengthBucketBatchSampler(lengths, MAX_TOKENS)
    with pytest.raises(ValueError, match="bad state"):
        sampler.load_state_dict({"epoch": 0, "batches_yielded": len(sampler) + 1})
    with pytest.raises(ValueError, match="bad state"):
        sampler.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="max_tokens=300000.*max 320000 \\(index 1\\)"):
        LengthBucketBatchSampler([16_000, 320_000, 48_000], 300_000)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        LengthBucketBatchSampler(lengths, MAX_TOKENS, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="no lengths"):
        LengthBucketBatchSampler([], MAX_TOKENS)
    with pytest.raises(ValueError, match="non-empty labelled pool"):
        LengthBucketBatchSampler(lengths, MAX_TOKENS, labelled_per_epoch=3)


@pytest.mark.parametrize("per_epoch", [12, 75])
def test_labelled_pool_is_drawn_per_epoch_in_exact_numbers(per_epoch: int) -> None:
    main = realistic_lengths(300, seed=1)
    labelled = realistic_lengths(40, seed=2)
    all_lengths = np.concatenate([main, labelled])
    sampler = LengthBucketBatchSampler(
        main, MAX_TOKENS, labelled_lengths=labelled, labelled_per_epoch=per_epoch
    )
    assert sampler.items_per_epoch == 300 + per_epoch
    draws = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # constant although the draw changes
        for batch in batches:
            assert len(batch) * all_lengths[batch].max() <= MAX_TOKENS
        counts = Counter(i for b in batches for i in b)
        assert all(counts[i] == 1 for i in range(300))  # every unlabelled item, once
        drawn = Counter({i: c for i, c in counts.items() if i >= 300})
        assert sum(drawn.values()) == per_epoch
        assert set(counts) <= set(range(340))
        if per_epoch <= 40:
            assert max(drawn.values()) == 1  # no repeats while the pool lasts
        draws.append(drawn)
    assert draws[0] != draws[1]
    # over enough epochs every labelled item gets its turn
    used = {i for e in range(30) for b in sampler.global_batches(e) for i in b if i >= 300}
    assert used == set(range(300, 340))
