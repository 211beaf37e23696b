"""Data side of pretraining: manifest schema, audio reading, batches, samplers, DataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, load_audio, resampled_length
from emotion_ssl.data.batch import AudioBatch, AudioItem, collate_audio, crop_batch_to_shortest
from emotion_ssl.data.manifest import (
    ManifestEntry,
    ManifestError,
    entry_from_audio_file,
    read_manifest,
    write_manifest,
)
from emotion_ssl.data.synthetic import write_synthetic_corpus

if TYPE_CHECKING:
    from emotion_ssl.data.pretrain import (
        LengthBucketBatchSampler,
        PretrainDataModule,
        PretrainDataset,
        ResumableLoader,
    )

_FROM_PRETRAIN = (
    "LengthBucketBatchSampler",
    "PretrainDataModule",
    "PretrainDataset",
    "ResumableLoader",
)


def __getattr__(name: str) -> Any:
    # pretrain.py imports Lightning (seconds); data preparation needs only the manifest
    if name in _FROM_PRETRAIN:
        from emotion_ssl.data import pretrain

        return getattr(pretrain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TARGET_RATE",
    "AudioBatch",
    "AudioItem",
    "AudioReadError",
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
    "read_manifest",
    "resampled_length",
    "write_manifest",
    "write_synthetic_corpus",
]
