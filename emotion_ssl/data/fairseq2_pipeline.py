"""Pretraining batches through fairseq2's native data pipeline (`fairseq2.data`).

    read_sequence(this pass's batches of dataset indices)     # planned by the batch sampler
      .map(decode, crop and collate one batch, num_parallel_calls=N)   # C++ thread pool
      .prefetch(k)                                            # background thread
      .and_return()

What fairseq2 does here: the pipeline, its parallel map (threads, one process, no pickling
of the dataset) and prefetching; `Fairseq2AudioDecoder` decodes with fairseq2's
`FileMapper` + `AudioDecoder` (libsndfile in C++).

What stays with `LengthBucketBatchSampler` (shared with the torch backend, so both
backends yield identical batches and checkpoints hold the same position): the epoch's plan
of batches: sort by length, cut under the `max_tokens` budget, shuffle, mix in the labelled
pool, and deal to the ranks. fairseq2 0.8.1's own `shard` + `shuffle` + `bucket_by_length`
cannot meet three requirements of this project:

1. Equal batches per rank without losing data. `shard` before bucketing gives each rank
   the same number of *items*, but `bucket_by_length` then yields a data-dependent number
   of *batches* per rank (uneven counts deadlock DDP). `shard` after bucketing equalises
   by dropping up to world_size - 1 batches per epoch (`allow_uneven=False`). fairseq2's
   trainer handles this with an all-gather of batch counts every step (`DataPipelineReader`,
   `SyncMode.UNTIL_FIRST`), which stops every rank at the shortest one: data dropped again.
2. An exact labelled fraction. `DataPipeline.sample(weights=...)` draws the source of each
   item at random, so the labelled share and hence the epoch's batch count vary.
3. A small, checkable resume state. `DataPipeline.state_dict(strict=True)` holds the
   shuffle buffer (with window 0, the whole epoch's examples), and nothing in it says
   which world size or data it was made for.

The pipeline keeps the position the torch backend keeps (epoch, batches handed out), so a
checkpoint made with one backend resumes exactly with the other.

fairseq2n needs libsndfile.so.1. When the system has none (a bare container), this module
loads the copy bundled with the `soundfile` wheel first (`load_fairseq2_data`).
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, to_mono_at_rate
from emotion_ssl.data.batch import AudioBatch, AudioItem, collate_audio

_lock = threading.Lock()
_namespace: SimpleNamespace | None = None
_failure: ImportError | None = None


def _preload_bundled_libsndfile() -> bool:
    """dlopen soundfile's bundled libsndfile globally, so fairseq2n finds libsndfile.so.1."""
    import soundfile

    folder = Path(soundfile.__file__).parent / "_soundfile_data"
    for candidate in sorted(glob.glob(str(folder / "libsndfile*"))):
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return True
    return False


def _import_fairseq2_data() -> tuple[Any, Any]:
    try:
        try:
            pipeline = importlib.import_module("fairseq2.data.data_pipeline")
        except OSError as first:
            # fairseq2n asks the dynamic linker for libsndfile.so.1; pip's soundfile ships one
            if "libsndfile" not in str(first) or not _preload_bundled_libsndfile():
                raise
            pipeline = importlib.import_module("fairseq2.data.data_pipeline")
        return pipeline, importlib.import_module("fairseq2.data.audio")
    except (ImportError, OSError) as e:
        raise ImportError(f"fairseq2's native library cannot load: {e}") from e


def load_fairseq2_data() -> SimpleNamespace:
    """fairseq2's data classes: read_sequence, FileMapper, AudioDecoder, DataPipeline.

    Raises: ImportError explaining what is missing when fairseq2n cannot load.
    """
    global _namespace, _failure
    with _lock:
        if _namespace is not None:
            return _namespace
        if _failure is not None:
            raise _failure
        try:
            pipeline, audio = _import_fairseq2_data()
        except ImportError as e:
            _failure = e
            raise
        _namespace = SimpleNamespace(
            read_sequence=pipeline.read_sequence,
            FileMapper=pipeline.FileMapper,
            DataPipeline=pipeline.DataPipeline,
            AudioDecoder=audio.AudioDecoder,
        )
        return _namespace


class Fairseq2AudioDecoder:
    """`load_audio` with fairseq2's decoder: (S,) float32 mono at `target_rate`.

    Same output and errors as `emotion_ssl.data.audio.load_audio` (the down-mix, checks and
    resampling are shared); both decode with libsndfile. Picklable: the native objects are
    built lazily in each process.
    """

    def __init__(self, target_rate: int = TARGET_RATE) -> None:
        self.target_rate = target_rate
        self._natives: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"target_rate": self.target_rate, "_natives": None}

    def _decoder(self) -> tuple[Any, Any]:
        if self._natives is None:
            f2 = load_fairseq2_data()
            self._natives = (f2.FileMapper(), f2.AudioDecoder(dtype=torch.float32))
        return self._natives

    def __call__(self, path: str | Path, target_rate: int | None = None) -> np.ndarray:
        file_mapper, decode = self._decoder()
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            decoded = decode(file_mapper(str(path))["data"])
        except Exception as e:  # fairseq2 raises ValueError / ByteStreamError / RuntimeError
            raise AudioReadError(path, f"cannot read audio ({e})") from e
        waveform = decoded["waveform"].numpy()  # (S,) mono or (S, C)
        data = waveform[:, None] if waveform.ndim == 1 else waveform
        rate = round(float(decoded["sample_rate"]))
        return to_mono_at_rate(data, rate, path, target_rate or self.target_rate)


class Fairseq2BatchSource:
    """The batches of one pass of `batch_sampler`, loaded through a fairseq2 DataPipeline.

    Iterating reads the sampler's remaining batches for this pass (it honours a loaded
    position), then streams collated `AudioBatch`es in the sampler's order:
    `num_parallel_calls` batches are decoded at once on fairseq2's threads, and `prefetch`
    finished batches wait in a background thread.
    """

    def __init__(
        self,
        dataset: Dataset[AudioItem],
        batch_sampler: Iterable[list[int]],
        *,
        num_parallel_calls: int = 1,
        prefetch: int = 2,
    ) -> None:
        if num_parallel_calls < 1 or prefetch < 0:
            raise ValueError(
                f"need num_parallel_calls >= 1 and prefetch >= 0, got {num_parallel_calls}, "
                f"{prefetch}"
            )
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_parallel_calls = num_parallel_calls
        self.prefetch = prefetch
        load_fairseq2_data()  # fail here, at construction, when fairseq2 cannot load

    def _load(self, indices: Sequence[int]) -> AudioBatch:
        return collate_audio([self.dataset[i] for i in indices])

    def __iter__(self) -> Iterator[AudioBatch]:
        batches = [list(batch) for batch in self.batch_sampler]
        if not batches:
            return
        f2 = load_fairseq2_data()
        builder = f2.read_sequence(batches).map(
            self._load, num_parallel_calls=self.num_parallel_calls
        )
        if self.prefetch:
            builder = builder.prefetch(self.prefetch)
        pipeline = builder.and_return()
        try:
            yield from pipeline
        finally:
            # a pass cut short (limit_train_batches, end of max_steps) stops its threads now
            pipeline.reset()
