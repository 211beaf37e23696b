"""Span masks: exact count per row, padding untouched, seeded, span-shaped, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from emotion_ssl.models.masking import clone_lengths, compute_span_mask

torch.set_num_threads(1)

LENGTHS = [1, 2, 5, 49, 50, 123, 1000]
MAX_LEN = 1010  # every row has padding after its valid frames

# floor(mask_prob * T), written out by hand for each (mask_prob, T)
EXPECTED_COUNTS = {
    0.5: {1: 0, 2: 1, 5: 2, 49: 24, 50: 25, 123: 61, 1000: 500},
    0.25: {1: 0, 2: 0, 5: 1, 49: 12, 50: 12, 123: 30, 1000: 250},
    0.8: {1: 0, 2: 1, 5: 4, 49: 39, 50: 40, 123: 98, 1000: 800},
    0.1: {1: 0, 2: 0, 5: 0, 49: 4, 50: 5, 123: 12, 1000: 100},
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    runs, current = [], 0
    for value in row.tolist():
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def test_shape_dtype_and_device() -> None:
    lengths = torch.tensor([3, 7], dtype=torch.int32)
    mask = compute_span_mask(lengths, 9, generator=_gen(0))
    assert mask.shape == (2, 9)
    assert mask.dtype == torch.bool
    assert mask.device == lengths.device


@pytest.mark.parametrize("mask_prob", sorted(EXPECTED_COUNTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_masked_count_per_row(mask_prob: float, seed: int) -> None:
    lengths = torch.tensor(LENGTHS)
    mask = compute_span_mask(lengths, MAX_LEN, mask_prob, generator=_gen(seed))
    counts = mask.sum(dim=1).tolist()
    assert counts == [EXPECTED_COUNTS[mask_prob][T] for T in LENGTHS]


@pytest.mark.parametrize(
    "mask_prob_adjust",
    [0.0, 0.4],  # 0.0: spans overlap, frames are added; 0.4: too many spans, frames are removed
)
def test_exact_count_whichever_way_the_spans_miss(mask_prob_adjust: float) -> None:
    lengths = torch.tensor([1000, 777, 50])
    for seed in range(5):
        mask = compute_span_mask(lengths, 1000, 0.5, 5, mask_prob_adjust, _gen(seed))
        assert mask.sum(dim=1).tolist() == [500, 388, 25]


def test_padding_is_never_masked() -> None:
    lengths = torch.tensor(LENGTHS)
    for seed in range(3):
        mask = compute_span_mask(lengths, MAX_LEN, 0.8, generator=_gen(seed))
        for row, T in enumerate(LENGTHS):
            assert not mask[row, T:].any(), f"row of length {T} masks padding"


def test_rows_without_padding_and_zero_length_rows() -> None:
    mask = compute_span_mask(torch.tensor([20, 0, 20]), 20, 0.5, generator=_gen(0))
    assert mask.sum(dim=1).tolist() == [10, 0, 10]


def test_same_seed_same_mask_other_seed_other_mask() -> None:
    lengths = torch.tensor([1000, 500, 123])
    a = compute_span_mask(lengths, 1000, generator=_gen(7))
    b = compute_span_mask(lengths, 1000, generator=_gen(7))
    c = compute_span_mask(lengths, 1000, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every row differs, not just one
    assert all(not torch.equal(a[i], c[i]) for i in range(3))


def test_global_rng_when_no_generator() -> None:
    lengths = torch.tensor([300, 200])
    torch.manual_seed(3)
    a = compute_span_mask(lengths, 300)
    torch.manual_seed(3)
    b = compute_span_mask(lengths, 300)
    assert torch.equal(a, b)
    assert a.sum(dim=1).tolist() == [150, 100]


def test_rows_of_equal_length_get_independent_masks() -> None:
    lengths = clone_lengths(torch.tensor([400]), 8)
    mask = compute_span_mask(lengths, 400, generator=_gen(0))
    distinct = {tuple(row.nonzero().view(-1).tolist()) for row in mask}
    assert len(distinct) == 8


def test_masks_form_spans() -> None:
    lengths = torch.full((8,), 1000)
    span_mask = compute_span_mask(lengths, 1000, 0.5, 5, 0.05, _gen(0))
    single_mask = compute_span_mask(lengths, 1000, 0.5, 1, 0.05, _gen(0))

    span_runs = [r for row in span_mask for r in _runs(row)]
    single_runs = [r for row in single_mask for r in _runs(row)]
    span_mean = sum(span_runs) / len(span_runs)
    single_mean = sum(single_runs) / len(single_runs)
    # independent frames at p = 0.5 give mean run length 1 / (1 - p) = 2
    assert single_mean < 2.5
    assert span_mean > 3.5
    # most masked frames lie in runs at least one span long
    in_long_runs = sum(r for r in span_runs if r >= 5) / sum(span_runs)
    assert in_long_runs > 0.7
    single_in_long_runs = sum(r for r in single_runs if r >= 5) / sum(single_runs)
    assert single_in_long_runs < 0.3


def test_span_length_larger_than_row() -> None:
    # a span wider than the row is clamped to it; the count stays exact
    mask = compute_span_mask(torch.tensor([4, 3]), 6, 0.5, 10, 3.0, _gen(0))
    assert mask.sum(dim=1).tolist() == [2, 1]
    assert not mask[0, 4:].any() and not mask[1, 3:].any()


@pytest.mark.parametrize("T", LENGTHS)
def test_zero_mask_prob_masks_nothing(T: int) -> None:
    mask = compute_span_mask(torch.tensor([T]), MAX_LEN, 0.0, generator=_gen(0))
    assert not mask.any()


@pytest.mark.parametrize("mask_prob", [-0.1, 1.0, 1.5, math.nan])
def test_bad_mask_prob_raises(mask_prob: float) -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        compute_span_mask(torch.tensor([10]), 10, mask_prob)


@pytest.mark.parametrize("span_length", [0, -3])
def test_bad_span_length_raises(span_length: int) -> None:
    with pytest.raises(ValueError, match="span_length"):
        compute_span_mask(torch.tensor([10]), 10, 0.5, span_length)


def test_length_beyond_max_len_raises() -> None:
    with pytest.raises(ValueError, match="max_len"):
        compute_span_mask(torch.tensor([5, 11]), 10)


def test_clone_lengths_repeat_interleave_order() -> None:
    out = clone_lengths(torch.tensor([3, 5]), 3)
    assert out.tolist() == [3, 3, 3, 5, 5, 5]
    assert clone_lengths(torch.tensor([4]), 1).tolist() == [4]
    assert clone_lengths(torch.tensor([7, 2, 9]), 2).tolist() == [7, 7, 2, 2, 9, 9]
