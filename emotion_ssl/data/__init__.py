"""Data side of pretraining: manifest schema, audio reading, batches, samplers, DataModules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, load_audio, resampled_length
from emotion_ssl.data.batch import AudioBatch, AudioItem, collate_audio, crop_batch_to_shortest
from emotion_ssl.data.manifest import (
    ManifestEntry,
    ManifestError,
    entry_from_audio_file,
    read_emobox_manifest,
    read_manifest,
    write_emobox_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from emotion_ssl.data.labelled import (
        LabelledDataModule,
        LabelledDataset,
        select_fold,
    )
    from emotion_ssl.data.pretrain import (
        LengthBucketBatchSampler,
        PretrainDataModule,
        PretrainDataset,
        ResumableLoader,
    )

# these modules import Lightning (seconds); data preparation needs only the manifest
_LAZY = {
    "LengthBucketBatchSampler": "pretrain",
    "PretrainDataModule": "pretrain",
    "PretrainDataset": "pretrain",
    "ResumableLoader": "pretrain",
    "LabelledDataModule": "labelled",
    "LabelledDataset": "labelled",
    "select_fold": "labelled",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"emotion_ssl.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TARGET_RATE",
    "AudioBatch",
    "AudioItem",
    "AudioReadError",
    "LabelledDataModule",
    "LabelledDataset",
    "LengthBucketBatchSampler",
    "ManifestEntry",
    "ManifestError",
    "PretrainDataModule",
    "PretrainDataset",
    "ResumableLoader",
    "collate_audio",
    "crop_batch_to_shortest",
    "entry_from_audio_file",
    "load_audio",
    "read_emobox_manifest",
    "read_manifest",
    "resampled_length",
    "select_fold",
    "write_emobox_manifest",
    "write_manifest",
]
