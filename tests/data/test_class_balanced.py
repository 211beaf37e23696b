"""m-per-class labelled sampling: every global batch holds at least m clips of every class."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emotion_ssl.data.manifest import read_manifest
from emotion_ssl.data.pretrain import LengthBucketBatchSampler, PretrainDataModule
from emotion_ssl.demo.corpus import write_synthetic_corpus

MAX_TOKENS = 600_000  # the base recipe's 37.5 s per GPU


def _lengths(n: int, seed: int, top_seconds: float) -> np.ndarray:
    seconds = np.clip(np.random.default_rng(seed).lognormal(np.log(3.0), 0.6, n), 0.5, top_seconds)
    return (seconds * 16_000).astype(np.int64)


# clips of 0.5-4 s: a batch of 37.5 s holds 9 of them, so up to 8 can be labelled
MAIN = _lengths(300, seed=1, top_seconds=4.0)
LABELLED = _lengths(40, seed=2, top_seconds=4.0)
# 4 classes of 16, 12, 8 and 4 clips: the small class must recur, the large ones wait
CLASSES = np.repeat(np.arange(4), [16, 12, 8, 4])[np.random.default_rng(3).permutation(40)]


def _sampler(num_replicas: int, rank: int, m: int = 2) -> LengthBucketBatchSampler:
    return LengthBucketBatchSampler(
        MAIN,
        MAX_TOKENS,
        seed=7,
        num_replicas=num_replicas,
        rank=rank,
        labelled_lengths=LABELLED,
        labelled_classes=CLASSES,
        labelled_per_class=m,
    )


@pytest.mark.parametrize(
    ("num_replicas", "per_class_counts"),
    # K * m = 8 labelled clips per step, q = ceil(8 / W) per batch: W = 3 -> 9, one class
    # (in rotation) gets a third clip
    [(1, [2, 2, 2, 2]), (2, [2, 2, 2, 2]), (3, [2, 2, 2, 3])],
)
def test_every_global_batch_holds_m_clips_of_every_class(
    num_replicas: int, per_class_counts: list[int]
) -> None:
    samplers = [_sampler(num_replicas, r) for r in range(num_replicas)]
    all_lengths = np.concatenate([MAIN, LABELLED])
    q = samplers[0].labelled_per_batch
    assert q == -(-8 // num_replicas)
    q_budget = samplers[0].labelled_budget
    for epoch in range(3):
        per_rank = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        assert len({len(batches) for batches in per_rank}) == 1  # equal counts on every rank
        seen: Counter[int] = Counter()
        extra_classes = []
        for step in zip(*per_rank, strict=True):  # the batches of one optimizer micro-step
            classes: Counter[int] = Counter()
            for batch in step:
                labelled = [i for i in batch if i >= 300]
                assert len(labelled) == q  # q labelled clips in every rank batch
                assert len(set(labelled)) == q  # none twice (every class has enough clips)
                assert len(batch) > q  # and at least one unlabelled clip
                assert len(batch) * all_lengths[batch].max() <= MAX_TOKENS
                classes.update(int(CLASSES[i - 300]) for i in labelled)
                seen.update(labelled)
            assert sorted(classes.values()) == per_class_counts
            assert set(classes) == {0, 1, 2, 3}
            extra_classes += [c for c, n in classes.items() if n == 3]
        # clips short enough for every batch (<= labelled_budget) are used in turn: within a
        # class their use counts differ by at most one; longer ones wait for longer batches
        rounded = -(-LABELLED // 1600) * 1600
        for c in range(4):
            everywhere = np.flatnonzero(np.equal(CLASSES, c) & (rounded <= q_budget))
            counts = [seen[300 + i] for i in everywhere]
            assert len(counts) >= min(q, int(np.sum(np.equal(CLASSES, c))))
            assert max(counts) - min(counts) <= 1, (c, counts)
        if num_replicas == 3:  # the extra clip goes round the classes
            assert set(extra_classes) == {0, 1, 2, 3}
        unlabelled = Counter(i for batches in per_rank for b in batches for i in b if i < 300)
        assert set(unlabelled) == set(range(300))  # every unlabelled item (repeats: padding)
        assert sum(unlabelled.values()) - 300 < max(len(b) for b in per_rank[0]) * num_replicas


def test_epochs_draw_differently_and_replay_exactly() -> None:
    sampler = _sampler(2, 0)
    first = [b.tolist() for b in sampler.global_batches(0)]
    assert first == [b.tolist() for b in _sampler(2, 1).global_batches(0)]
    assert first != [b.tolist() for b in sampler.global_batches(1)]
    assert sampler.items_per_epoch == 300 + len(sampler) * 2 * 4


def test_a_budget_that_cannot_hold_the_labelled_clips_is_an_error() -> None:
    # one rank, 3 per class: 12 labelled clips of up to 4 s plus one more exceed 37.5 s
    with pytest.raises(ValueError, match="labelled_per_class=3 puts 12 labelled clips"):
        _sampler(1, 0, m=3)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="labelled_classes"):
        LengthBucketBatchSampler(MAIN, MAX_TOKENS, labelled_lengths=LABELLED, labelled_per_class=1)
    with pytest.raises(ValueError, match="labelled_per_epoch=0"):
        LengthBucketBatchSampler(
            MAIN,
            MAX_TOKENS,
            labelled_lengths=LABELLED,
            labelled_classes=CLASSES,
            labelled_per_class=1,
            labelled_per_epoch=5,
        )


def test_data_module_batches_count_classes_exactly(tmp_path: Path) -> None:
    unlabelled = write_synthetic_corpus(
        tmp_path / "unlabelled", num_files=20, seed=9, min_seconds=0.6, max_seconds=1.2
    )
    labelled = write_synthetic_corpus(
        tmp_path / "labelled",
        num_files=24,
        seed=3,
        min_seconds=0.6,
        max_seconds=2.0,
        labels=["ang", "hap", "neu", "sad"],
    )
    dm = PretrainDataModule(
        str(unlabelled),
        labelled_manifest=str(labelled),
        labelled_per_class=1,
        max_tokens=200_000,
        max_sample_size=24_000,
        backend="torch",
        decoder="soundfile",
    )
    loader = dm.train_dataloader()
    true_label = {e.key: e.label for e in read_manifest(labelled)}
    batches = list(loader)
    assert len(batches) == len(loader) > 1
    for batch in batches:  # one rank: each batch is a global batch
        labels = batch.labels.tolist()
        assert sorted(label for label in labels if label >= 0) == [0, 1, 2, 3]
        assert batch.batch_size * batch.waveforms.size(1) <= 200_000
        for key, label in zip(batch.keys, labels, strict=True):
            if label >= 0:
                assert dm.label_names is not None
                assert dm.label_names[label] == true_label[key]
    with pytest.raises(ValueError, match="labelled_fraction=0"):
        PretrainDataModule(
            str(unlabelled),
            labelled_manifest=str(labelled),
            labelled_per_class=1,
            labelled_fraction=0.2,
        )
