"""PretrainDataModule and ResumableLoader: batches, mixing, ranks, and exact resume (with Lightning)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from emotion_ssl.data import (
    AudioBatch,
    read_manifest,
    resampled_length,
    write_manifest,
)
from emotion_ssl.data.pretrain import PretrainDataModule, ResumableLoader
from emotion_ssl.demo.corpus import write_synthetic_corpus

Record = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], float]


def _record(batch: AudioBatch) -> Record:
    """What identifies a batch exactly: keys, lengths, labels and a checksum of the audio."""
    return (
        tuple(batch.keys),
        tuple(batch.lengths.tolist()),
        tuple(batch.labels.tolist()),
        float(batch.waveforms.double().sum()),
    )


def _module(manifest: Path, **kwargs: Any) -> PretrainDataModule:
    defaults: dict[str, Any] = {"max_tokens": 64_000, "max_sample_size": 24_000}
    return PretrainDataModule(str(manifest), **{**defaults, **kwargs})


def _kept_keys(manifest: Path, min_sample_size: int = 8_000) -> set[str]:
    entries = read_manifest(manifest)
    return {
        e.key for e in entries if resampled_length(e.num_samples, e.sample_rate) >= min_sample_size
    }


@pytest.fixture(scope="module")
def unlabelled_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 unlabelled utterances of 0.6-1.2 s (none dropped). Read-only."""
    folder = tmp_path_factory.mktemp("unlabelled")
    return write_synthetic_corpus(folder, num_files=20, seed=9, min_seconds=0.6, max_seconds=1.2)


def test_train_loader_yields_every_kept_item_once_within_budget(synthetic_manifest: Path) -> None:
    dm = _module(synthetic_manifest)
    dm.setup("fit")
    assert dm.train_dataset is not None
    kept = _kept_keys(synthetic_manifest)
    assert 0 < dm.train_dataset.num_dropped_short == 24 - len(kept)

    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(kept)
    for batch in batches:
        assert batch.batch_size * batch.waveforms.size(1) <= 64_000
        assert batch.lengths.max() <= 24_000
        assert (batch.labels == -1).all()  # the train manifest's labels are ignored
        for row, length in zip(batch.waveforms, batch.lengths, strict=True):
            assert (row[length:] == 0).all()
    assert loader.state_dict()["batches_yielded"] == len(loader)


def test_crop_to_shortest_leaves_no_padding_and_is_reproducible(synthetic_manifest: Path) -> None:
    padded = {tuple(b.keys): b for b in _module(synthetic_manifest).train_dataloader()}
    records = []
    for _ in range(2):
        loader = _module(synthetic_manifest, batching="crop_to_shortest").train_dataloader()
        batches = list(loader)
        for batch in batches:
            assert batch.padded_fraction == 0.0
            assert len(set(batch.lengths.tolist())) == 1
            # every row is cropped to the shortest item of the same batch in bucket mode
            assert batch.waveforms.size(1) == padded[tuple(batch.keys)].lengths.min()
        records.append([_record(b) for b in batches])
    assert records[0] == records[1]


def test_labelled_fraction_is_honoured_with_labels_carried(
    unlabelled_manifest: Path, synthetic_manifest: Path
) -> None:
    dm = _module(
        unlabelled_manifest, labelled_manifest=str(synthetic_manifest), labelled_fraction=0.2
    )
    loader = dm.train_dataloader()
    assert dm.label_names == ["ang", "hap", "neu", "sad"]  # inferred, sorted
    true_label = {e.key: e.label for e in read_manifest(synthetic_manifest)}
    drawn = []
    for _ in range(2):
        items = [(k, int(label)) for b in loader for k, label in zip(b.keys, b.labels, strict=True)]
        labelled = [(k, label) for k, label in items if label >= 0]
        assert len(items) == 25 and len(labelled) == 5  # 5 / (20 + 5) = 20 %
        assert {k for k, label in items if label < 0} == {
            e.key for e in read_manifest(unlabelled_manifest)
        }
        for key, label in labelled:
            assert dm.label_names[label] == true_label[key]
        drawn.append(sorted(k for k, _ in labelled))
    assert drawn[0] != drawn[1]  # a new draw each epoch


def test_unlabelled_entries_of_the_labelled_manifest_stay_out_of_the_pool(
    unlabelled_manifest: Path, synthetic_manifest: Path, tmp_path: Path
) -> None:
    entries = read_manifest(synthetic_manifest)
    mixed = [replace(e, label=None) if i % 2 else e for i, e in enumerate(entries)]
    labelled_manifest = write_manifest(tmp_path / "labelled.jsonl", mixed)
    dm = _module(
        unlabelled_manifest, labelled_manifest=str(labelled_manifest), labelled_fraction=0.5
    )
    dm.setup("fit")
    assert dm.labelled_dataset is not None
    pool = {e.key for e in dm.labelled_dataset.entries}
    assert pool == {e.key for e in mixed if e.label is not None} & _kept_keys(synthetic_manifest)
    assert (dm.labelled_dataset.labels >= 0).all()


@pytest.mark.parametrize(
    ("batching", "num_workers", "backend"),
    [
        ("bucket", 0, "torch"),
        ("crop_to_shortest", 0, "torch"),
        ("bucket", 2, "torch"),
        ("crop_to_shortest", 2, "fairseq2"),
    ],
)
def test_loader_resumes_mid_epoch_exactly(
    synthetic_manifest: Path, batching: str, num_workers: int, backend: str
) -> None:
    def loader() -> ResumableLoader:
        return _module(
            synthetic_manifest, batching=batching, num_workers=num_workers, backend=backend
        ).train_dataloader()

    reference = loader()
    epochs = [[_record(b) for b in reference] for _ in range(2)]
    assert len(epochs[0]) >= 4 and epochs[0] != epochs[1]

    interrupted = loader()
    iterator = iter(interrupted)
    head = [_record(next(iterator)) for _ in range(2)]
    state = interrupted.state_dict()
    # counts batches handed out, not those the workers prefetched
    assert state["epoch"] == 0 and state["batches_yielded"] == 2
    del iterator

    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [_record(b) for b in resumed] == epochs[0]
    assert [_record(b) for b in resumed] == epochs[1]


def test_a_pass_cut_short_still_ends_its_epoch(synthetic_manifest: Path) -> None:
    reference = _module(synthetic_manifest).train_dataloader()
    epochs = [[_record(b) for b in reference] for _ in range(2)]
    loader = _module(synthetic_manifest).train_dataloader()
    next(iter(loader))  # e.g. limit_train_batches=1
    assert [_record(b) for b in loader] == epochs[1]


def test_state_from_another_world_size_moves_on_to_the_next_epoch(
    synthetic_manifest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loader = _module(synthetic_manifest).train_dataloader()
    state = {"epoch": 3, "batches_yielded": 1, "num_replicas": 4, "num_global_batches": 99}
    with caplog.at_level(logging.WARNING):
        loader.load_state_dict(state)
    assert "cannot be replayed exactly, continuing with epoch 4" in caplog.text
    list(loader)
    assert loader.state_dict()["epoch"] == 4


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_from_the_trainer_get_equal_counts_and_disjoint_items(
    synthetic_manifest: Path, world_size: int
) -> None:
    per_rank = []
    for rank in range(world_size):
        dm = _module(synthetic_manifest, max_tokens=40_000)
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, current_epoch=0)  # type: ignore[assignment]
        per_rank.append([tuple(b.keys) for b in dm.train_dataloader()])
    assert len({len(batches) for batches in per_rank}) == 1
    distinct = {b for batches in per_rank for b in batches}
    keys = [k for b in distinct for k in b]
    assert sorted(keys) == sorted(_kept_keys(synthetic_manifest))  # disjoint and complete


def test_validation_loader_repeats_the_same_batches(synthetic_manifest: Path) -> None:
    dm = _module(
        synthetic_manifest, valid_manifest=str(synthetic_manifest), batching="crop_to_shortest"
    )
    loader = dm.val_dataloader()
    assert isinstance(loader, ResumableLoader)
    first = [_record(b) for b in loader]
    assert [_record(b) for b in loader] == first
    assert any(r[1][0] != r[1][-1] for r in first)  # validation batches are padded, not cropped
    assert _module(synthetic_manifest).val_dataloader() == []


def test_bad_configuration_is_rejected(synthetic_manifest: Path) -> None:
    with pytest.raises(ValueError, match="needs a labelled_manifest"):
        _module(synthetic_manifest, labelled_fraction=0.2)
    with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
        _module(synthetic_manifest, labelled_manifest="x.jsonl", labelled_fraction=1.0)
    with pytest.raises(
        ValueError, match="max_tokens \\(100000\\) must be >= max_sample_size \\(320000\\)"
    ):
        PretrainDataModule(str(synthetic_manifest), max_tokens=100_000)


class _Recorder(L.LightningModule):
    """Does nothing but remember which batches training and validation received."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[Record] = []
        self.validated: list[Record] = []

    def training_step(self, batch: AudioBatch, batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, AudioBatch)
        self.seen.append(_record(batch))
        return (self.weight * batch.waveforms.mean()).sum()

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        self.validated.append(_record(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(manifest: Path, checkpoints: Path | None, ckpt_path: Path | None = None) -> _Recorder:
    model = _Recorder()
    callbacks = []
    if checkpoints is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints, filename="{step}", every_n_train_steps=1, save_top_k=-1
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=checkpoints is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    dm = _module(manifest, valid_manifest=str(manifest), batching="crop_to_shortest")
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_resume_sees_exactly_the_batches_of_an_uninterrupted_run(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    uninterrupted = _fit(synthetic_manifest, tmp_path)
    per_epoch = len(uninterrupted.seen) // 2
    assert len(uninterrupted.seen) == 2 * per_epoch and per_epoch >= 4
    assert uninterrupted.seen[:per_epoch] != uninterrupted.seen[per_epoch:]
    validation_runs = len(uninterrupted.validated) // 2
    assert uninterrupted.validated[:validation_runs] == uninterrupted.validated[validation_runs:]

    checkpoint = torch.load(tmp_path / "step=3.ckpt", weights_only=False)
    loader_state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state[0]["epoch"] == 0 and loader_state[0]["batches_yielded"] == 3

    for step in (3, per_epoch, per_epoch + 2):  # mid-epoch, at the epoch boundary, epoch 1
        resumed = _fit(synthetic_manifest, None, tmp_path / f"step={step}.ckpt")
        assert resumed.seen == uninterrupted.seen[step:], f"resumed from step {step}"
