"""Fine-tuning and evaluation data: labelled utterances of one fold, in padded batches.

Folds come from a manifest field written by data_prep (`fold` for IEMOCAP sessions,
CREMA-D and RAVDESS actor groups; `speaker_fold` for IEMOCAP leave-one-speaker-out). Fold k
of a field: "test" = the entries whose field equals k, "train" = all the others.

    train = LabelledDataset.from_manifest("manifests/iemocap/manifest.jsonl", fold=3,
                                          split="train")
    test = LabelledDataset.from_manifest(..., fold=3, split="test",
                                         label_names=train.label_names)
    loader = DataLoader(test, batch_size=8, collate_fn=collate_audio)
    batch = next(iter(loader))  # AudioBatch: waveforms (B, S), lengths (B,), labels (B,),
                                # keys, padding_mask (B, S) True = padding
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emotion_ssl.data.audio import TARGET_RATE, load_audio, resampled_length
from emotion_ssl.data.batch import AudioItem, collate_audio
from emotion_ssl.data.manifest import ManifestEntry, read_manifest
from emotion_ssl.data.splits import ValidSplit, holdout

logger = logging.getLogger(__name__)

Split = Literal["train", "test", "all"]


def fold_values(entries: Sequence[ManifestEntry], field: str = "fold") -> list[Any]:
    """The distinct values of a fold field, sorted."""
    return sorted({e.extra[field] for e in entries if field in e.extra}, key=str)


def select_fold(
    entries: Sequence[ManifestEntry],
    fold: int | str | None,
    split: Split,
    field: str = "fold",
    name: str = "<entries>",
) -> list[ManifestEntry]:
    """The entries of one side of fold `fold` of `field` (see the module docstring).

    fold=None or split="all" returns every entry. The fold is matched by its text, so
    `fold=3` and `fold="3"` are the same fold.

    Raises: ValueError naming the entry without the field, or the unknown fold and the
    folds there are.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if fold is None or split == "all":
        return list(entries)
    lacking = [e.key for e in entries if field not in e.extra]
    if lacking:
        raise ValueError(
            f"{name}: {len(lacking)} entries have no {field!r} field (first: {lacking[0]!r}); "
            "prepare the corpus with data_prep or choose another fold field"
        )
    values = fold_values(entries, field)
    if str(fold) not in {str(v) for v in values}:
        raise ValueError(f"{name}: no {field} {fold!r}; the folds are {values}")
    in_fold = [str(e.extra[field]) == str(fold) for e in entries]
    return [e for e, inside in zip(entries, in_fold, strict=True) if inside == (split == "test")]


class LabelledDataset(Dataset[AudioItem]):
    """Labelled manifest entries as 16 kHz `AudioItem`s with class indices (map-style).

    - Entries without a label are left out (logged with their count).
    - label_names: class names in index order; None = the sorted labels present. A label
      outside `label_names` is an error naming the entry.
    - max_sample_size: crop longer clips to this many 16 kHz samples at an offset drawn
      from (seed, index), the same every epoch; None keeps whole clips (evaluation).
    - sort_by_length: order items longest first, so that evaluation batches pad little.
    - An unreadable file raises AudioReadError naming it: a labelled corpus is small and
      prepared, so a bad file is a fault to fix, not one to skip.

    lengths: (N,) int64 samples each item will have (16 kHz, after the crop).
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        label_names: Sequence[str] | None = None,
        *,
        max_sample_size: int | None = None,
        sort_by_length: bool = False,
        seed: int = 1,
        name: str = "<entries>",
    ) -> None:
        labelled = [e for e in entries if e.label is not None]
        if len(labelled) < len(entries):
            logger.warning(
                "%s: %d of %d entries have no label and are left out",
                name,
                len(entries) - len(labelled),
                len(entries),
            )
        if not labelled:
            raise ValueError(f"{name}: no labelled entries")
        if max_sample_size is not None and max_sample_size < 1:
            raise ValueError(f"max_sample_size must be >= 1 or None, got {max_sample_size}")
        names = list(label_names) if label_names is not None else None
        if names is None:
            names = sorted({e.label for e in labelled if e.label is not None})
        index_of = {label: i for i, label in enumerate(names)}
        for entry in labelled:
            if entry.label not in index_of:
                raise ValueError(
                    f"{name}: entry {entry.key!r} has label {entry.label!r}, which is not in "
                    f"label_names {names}"
                )
        full = np.array(
            [resampled_length(e.num_samples, e.sample_rate, TARGET_RATE) for e in labelled],
            dtype=np.int64,
        )
        lengths = full if max_sample_size is None else np.minimum(full, max_sample_size)
        order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(full))
        self.name = name
        self.entries = [labelled[i] for i in order]
        self.label_names = names
        self.labels = np.array([index_of[e.label] for e in self.entries], dtype=np.int64)  # type: ignore[index]
        self.lengths = lengths[order]
        self.max_sample_size = max_sample_size
        self.seed = seed

    @classmethod
    def from_manifest(
        cls,
        manifest: str | Path,
        fold: int | str | None = None,
        split: Split = "all",
        *,
        fold_field: str = "fold",
        label_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> LabelledDataset:
        """One side of one fold of a manifest (see `select_fold`); kwargs go to __init__."""
        entries = read_manifest(manifest)
        chosen = select_fold(entries, fold, split, fold_field, name=str(manifest))
        where = f"{manifest} ({fold_field}={fold}, {split})" if fold is not None else str(manifest)
        return cls(chosen, label_names, name=where, **kwargs)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> AudioItem:
        entry = self.entries[index]
        waveform = load_audio(entry.path, TARGET_RATE)
        limit = self.max_sample_size
        if limit is not None and waveform.shape[0] > limit:
            rng = np.random.default_rng([self.seed, index])
            offset = int(rng.integers(0, waveform.shape[0] - limit + 1))
            waveform = waveform[offset : offset + limit]
        return AudioItem(key=entry.key, waveform=waveform, label=int(self.labels[index]))

    def class_counts(self) -> dict[str, int]:
        """Items per class name, in label_names order."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(n) for name, n in zip(self.label_names, counts, strict=True)}


def split_validation_entries(
    entries: Sequence[ManifestEntry], fraction: float, seed: int, by: ValidSplit = "speaker"
) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """Hold out about `fraction` of the entries (seeded) -> (train, validation): whole
    speakers (by="speaker"; "class" when speakers are missing) or a stratified share of each
    label (by="class"), `emotion_ssl.data.splits`.

    The validation side is chosen from the training side only, so the test fold never steers
    early stopping or checkpoint choice (SPEC section 7: 20% of train for validation).
    """
    split = holdout([e.label for e in entries], [e.speaker for e in entries], fraction, seed, by)
    if fraction > 0 and split.by != by:
        logger.info(
            "validation holds out a share of each class: no whole speaker could be held out "
            "(speakers missing, fewer than 2, or each the only voice of a class)"
        )
    return [entries[i] for i in split.train], [entries[i] for i in split.valid]


class LabelledDataModule(L.LightningDataModule):
    """Train on every fold but one, validate on a held-out part of the training side, test
    on that one fold.

    manifest: a labelled manifest with fold fields (from data_prep).
    fold: the held-out fold (`--data.fold 3`); None trains on everything and has no
        validation or test data.
    fold_field: "fold" (default) or another field, e.g. "speaker_fold" for IEMOCAP
        leave-one-speaker-out.
    label_names: class names in index order; None = the sorted labels of the training side.
    valid_fraction: share of the training side held out for validation (early stopping,
        best checkpoint); 0 = no validation.
    valid_split: "speaker" (default) holds out whole training speakers, as the test fold
        holds unseen ones; "class" a stratified share of each class over the same speakers
        (used anyway, and logged, when the manifest has no speakers).
    batch_size: utterances per batch; batches are zero padded to their longest item.
    max_sample_size: crop training clips to this many 16 kHz samples (None = whole clips);
        validation and test clips are never cropped and come longest first.
    num_workers: DataLoader worker processes.
    seed: the training shuffle and crops.
    """

    def __init__(
        self,
        manifest: str,
        fold: int | str | None = None,
        fold_field: str = "fold",
        label_names: list[str] | None = None,
        batch_size: int = 8,
        max_sample_size: int | None = 320_000,
        valid_fraction: float = 0.2,
        valid_split: ValidSplit = "speaker",
        num_workers: int = 0,
        seed: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # the resolved class list is the model's hyperparameter (the CLI links it there)
        self.save_hyperparameters(ignore=["label_names"])
        self.manifest = manifest
        self.fold = fold
        self.fold_field = fold_field
        self.label_names = label_names
        self.batch_size = batch_size
        self.max_sample_size = max_sample_size
        self.valid_fraction = valid_fraction
        self.valid_split: ValidSplit = valid_split
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: LabelledDataset | None = None
        self.valid_dataset: LabelledDataset | None = None
        self.test_dataset: LabelledDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        entries = read_manifest(self.manifest)
        name = self.manifest
        train = select_fold(entries, self.fold, "train", self.fold_field, name)
        train, valid = split_validation_entries(
            train, self.valid_fraction, self.seed, self.valid_split
        )

        self.train_dataset = LabelledDataset(
            train,
            self.label_names,
            max_sample_size=self.max_sample_size,
            seed=self.seed,
            name=f"{name} ({self.fold_field}={self.fold}, train)",
        )
        self.label_names = self.train_dataset.label_names
        if valid:
            self.valid_dataset = LabelledDataset(
                valid,
                self.label_names,
                sort_by_length=True,
                name=f"{name} ({self.fold_field}={self.fold}, validation)",
            )
        if self.fold is not None:
            test = select_fold(entries, self.fold, "test", self.fold_field, name)
            self.test_dataset = LabelledDataset(
                test,
                self.label_names,
                sort_by_length=True,
                name=f"{name} ({self.fold_field}={self.fold}, test)",
            )
        logger.info(
            "%s: fold %s of %r: %d training, %d validation and %d test utterances, classes %s",
            name,
            self.fold,
            self.fold_field,
            len(self.train_dataset),
            len(self.valid_dataset) if self.valid_dataset is not None else 0,
            len(self.test_dataset) if self.test_dataset is not None else 0,
            self.train_dataset.class_counts(),
        )

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.label_names or [])

    def _loader(self, dataset: LabelledDataset, shuffle: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=collate_audio,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        self.setup("fit")
        assert self.train_dataset is not None
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        self.setup("validate")
        return [] if self.valid_dataset is None else self._loader(self.valid_dataset, False)

    def test_dataloader(self) -> DataLoader[Any] | list[Any]:
        self.setup("test")
        return [] if self.test_dataset is None else self._loader(self.test_dataset, False)
