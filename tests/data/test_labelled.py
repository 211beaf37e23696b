"""Fine-tuning / evaluation datasets: folds by name, padded batches with lengths and masks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from emotion_ssl.data import AudioBatch, collate_audio, load_audio, read_manifest, write_manifest
from emotion_ssl.data.labelled import LabelledDataModule, LabelledDataset, select_fold


@pytest.fixture(scope="module")
def folded_manifest(synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic corpus regrouped: utterance i is spoken by spk{i // 6}, in fold i // 6 + 1
    (labels cycle over 4 classes, so every fold holds every class)."""
    entries = [
        replace(e, speaker=f"spk{i // 6:02d}", extra={**e.extra, "fold": i // 6 + 1})
        for i, e in enumerate(read_manifest(synthetic_manifest))
    ]
    out = tmp_path_factory.mktemp("folded") / "manifest.jsonl"
    # keep paths valid: the synthetic manifest stored them relative to its own folder
    return write_manifest(out, entries)


def test_select_fold_splits_by_name(folded_manifest: Path) -> None:
    entries = read_manifest(folded_manifest)
    test = select_fold(entries, 3, "test")
    train = select_fold(entries, "3", "train")  # a fold is matched by its text
    assert len(test) == 6 and len(train) == 18
    assert {e.speaker for e in test} == {"spk02"}
    assert not {e.speaker for e in test} & {e.speaker for e in train}
    assert select_fold(entries, None, "train") == entries == select_fold(entries, 2, "all")
    with pytest.raises(ValueError, match="no fold 7; the folds are \\[1, 2, 3, 4\\]"):
        select_fold(entries, 7, "test")
    with pytest.raises(ValueError, match="24 entries have no 'session' field"):
        select_fold(entries, 1, "test", field="session")
    with pytest.raises(ValueError, match="split must be"):
        select_fold(entries, 1, "dev")  # type: ignore[arg-type]


def test_padded_batches_carry_lengths_labels_and_masks(folded_manifest: Path) -> None:
    dataset = LabelledDataset.from_manifest(folded_manifest, fold=1, split="test")
    assert dataset.label_names == ["ang", "hap", "neu", "sad"]
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_audio)))
    assert isinstance(batch, AudioBatch)
    B, S = batch.waveforms.shape
    assert B == 4 and int(batch.lengths.max()) == S
    assert batch.padding_mask.shape == (B, S) and batch.padding_mask.dtype == torch.bool
    for row in range(B):
        length = int(batch.lengths[row])
        assert not batch.padding_mask[row, :length].any() and batch.padding_mask[row, length:].all()
        assert (batch.waveforms[row, length:] == 0).all()
        entry = dataset.entries[row]
        np.testing.assert_array_equal(batch.waveforms[row, :length].numpy(), load_audio(entry.path))
        assert dataset.label_names[int(batch.labels[row])] == entry.label
    assert batch.keys == [e.key for e in dataset.entries[:4]]


def test_crops_sorting_and_label_checks(folded_manifest: Path) -> None:
    entries = read_manifest(folded_manifest)
    cropped = LabelledDataset(entries, max_sample_size=8000, seed=5)
    assert cropped.lengths.max() == 8000
    assert all(cropped[i].waveform.shape[0] == cropped.lengths[i] for i in range(len(cropped)))
    # the same crop every time (seeded by index)
    np.testing.assert_array_equal(cropped[3].waveform, cropped[3].waveform)
    ordered = LabelledDataset(entries, sort_by_length=True)
    assert list(ordered.lengths) == sorted(ordered.lengths, reverse=True)
    unlabelled = [replace(e, label=None) for e in entries[:5]] + entries[5:]
    assert len(LabelledDataset(unlabelled)) == 19
    with pytest.raises(ValueError, match="has label 'ang', which is not in label_names"):
        LabelledDataset(entries, label_names=["neu", "sad"])
    assert LabelledDataset(entries, ["sad", "neu", "hap", "ang"]).class_counts() == {
        "sad": 6,
        "neu": 6,
        "hap": 6,
        "ang": 6,
    }


def test_data_module_holds_out_the_named_fold(folded_manifest: Path) -> None:
    dm = LabelledDataModule(str(folded_manifest), fold=4, batch_size=5, max_sample_size=12_000)
    assert dm.num_classes == 4
    train_keys = [k for b in dm.train_dataloader() for k in b.keys]
    test_batches = list(dm.test_dataloader())
    test_keys = [k for b in test_batches for k in b.keys]
    valid_keys = [k for b in dm.val_dataloader() for k in b.keys]
    # 18 on the training side (3 speakers x 6): one whole speaker (6 >= round(0.2 x 18))
    # validates, so the chosen epoch is judged on an unseen voice, as the test fold is
    assert len(train_keys) + len(valid_keys) == 18 and len(test_keys) == 6
    assert len(valid_keys) == 6 and dm.valid_dataset is not None
    assert sorted(dm.valid_dataset.class_counts().values()) == [1, 1, 2, 2]
    valid_speakers = {e.speaker for e in dm.valid_dataset.entries}
    assert dm.train_dataset is not None and len(valid_speakers) == 1
    assert not valid_speakers & {e.speaker for e in dm.train_dataset.entries}
    # the stratified split of before, on request: 20% of each class (4 x round(0.2 x 4.5))
    by_class = LabelledDataModule(str(folded_manifest), fold=4, valid_split="class")
    by_class.setup("fit")
    assert by_class.valid_dataset is not None
    assert sorted(by_class.valid_dataset.class_counts().values()) == [1, 1, 1, 1]
    # three disjoint sides: the test fold never steers early stopping
    assert not set(train_keys) & set(test_keys)
    assert not set(valid_keys) & (set(train_keys) | set(test_keys))
    assert max(int(b.lengths.max()) for b in dm.train_dataloader()) <= 12_000
    # evaluation: whole clips, longest first
    lengths = [int(n) for b in test_batches for n in b.lengths]
    assert lengths == sorted(lengths, reverse=True) and max(lengths) > 12_000
    # the same shuffle for the same seed
    again = LabelledDataModule(str(folded_manifest), fold=4, batch_size=5, max_sample_size=12_000)
    assert [k for b in again.train_dataloader() for k in b.keys] == train_keys
    everything = LabelledDataModule(str(folded_manifest), valid_fraction=0.0)
    assert len(everything.train_dataloader().dataset) == 24  # type: ignore[arg-type]
    assert everything.val_dataloader() == []
    assert everything.test_dataloader() == []
