"""The fairseq2 backend: its decoder equals load_audio, its batches equal the torch backend's."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emotion_ssl.data import AudioReadError, load_audio, read_manifest, write_manifest
from emotion_ssl.data.fairseq2_pipeline import (
    Fairseq2AudioDecoder,
    Fairseq2BatchSource,
    load_fairseq2_data,
)
from emotion_ssl.data.pretrain import LengthBucketBatchSampler, PretrainDataModule, PretrainDataset


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "rate", "shape", "subtype"),
    [
        ("mono.wav", 16_000, (3_000,), "PCM_16"),
        ("float.wav", 16_000, (3_000,), "FLOAT"),
        ("mono.flac", 16_000, (3_000,), "PCM_16"),
        ("stereo.wav", 16_000, (3_000, 2), "PCM_16"),
        ("cd.flac", 44_100, (4_410,), "PCM_16"),
        ("phone.wav", 8_000, (1_600, 2), "PCM_16"),
    ],
)
def test_decoder_equals_load_audio(
    tmp_path: Path, name: str, rate: int, shape: tuple[int, ...], subtype: str
) -> None:
    path = tmp_path / name
    sf.write(path, _noise(shape), rate, subtype=subtype)
    decoded = Fairseq2AudioDecoder()(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    np.testing.assert_array_equal(decoded, load_audio(path))


def test_decoder_errors_name_the_file(tmp_path: Path) -> None:
    decode = Fairseq2AudioDecoder()
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16_000)
    cases = {
        "missing.wav": "cannot read audio",
        "corrupt.wav": "cannot read audio",
        "empty.wav": "cannot read audio",
        "zero.wav": "file holds no audio samples",
    }
    for name, reason in cases.items():
        with pytest.raises(AudioReadError, match=f"{name}: {reason}"):
            decode(tmp_path / name)
    # picklable (DataLoader workers get a copy), natives rebuilt on first use
    copy = pickle.loads(pickle.dumps(decode))
    sf.write(tmp_path / "ok.wav", _noise((100,)), 16_000)
    assert copy(tmp_path / "ok.wav").shape == (100,)


def _records(module: PretrainDataModule, epochs: int = 2) -> list[list[Any]]:
    loader = module.train_dataloader()
    return [
        [
            (tuple(b.keys), tuple(b.lengths.tolist()), b.waveforms.double().sum().item())
            for b in loader
        ]
        for _ in range(epochs)
    ]


def test_every_backend_and_decoder_yields_the_same_batches(synthetic_manifest: Path) -> None:
    def module(**kwargs: Any) -> PretrainDataModule:
        return PretrainDataModule(
            str(synthetic_manifest),
            max_tokens=64_000,
            max_sample_size=24_000,
            batching="crop_to_shortest",
            **kwargs,
        )

    reference = _records(module(backend="torch", decoder="soundfile"))
    assert len(reference[0]) >= 4 and reference[0] != reference[1]
    for backend, decoder, workers in [
        ("fairseq2", "fairseq2", 0),
        ("fairseq2", "soundfile", 3),
        ("torch", "fairseq2", 2),
    ]:
        got = _records(module(backend=backend, decoder=decoder, num_workers=workers))
        assert got == reference, (backend, decoder, workers)


def test_batch_source_keeps_the_sampler_order_and_position(synthetic_manifest: Path) -> None:
    load_fairseq2_data()
    dataset = PretrainDataset(read_manifest(synthetic_manifest), max_sample_size=24_000)
    sampler = LengthBucketBatchSampler(dataset.lengths, 64_000, seed=4)
    expected = list(sampler)
    source = Fairseq2BatchSource(dataset, sampler, num_parallel_calls=4, prefetch=3)
    assert [b.keys for b in source] == [[dataset.entries[i].key for i in b] for b in expected]
    sampler.load_state_dict({"epoch": 0, "batches_yielded": 2})
    assert [b.keys for b in source] == [[dataset.entries[i].key for i in b] for b in expected[2:]]
    with pytest.raises(ValueError, match="num_parallel_calls >= 1"):
        Fairseq2BatchSource(dataset, sampler, num_parallel_calls=0)


def test_an_unreadable_file_is_skipped_as_in_the_torch_backend(
    synthetic_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = read_manifest(synthetic_manifest)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnothing")
    entries[5] = type(entries[5])(**{**entries[5].__dict__, "path": str(broken)})
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    with caplog.at_level(logging.WARNING):
        batches = {
            backend: _records(
                PretrainDataModule(
                    str(manifest),
                    max_tokens=64_000,
                    max_sample_size=24_000,
                    backend=backend,
                    num_workers=2,
                ),
                epochs=1,
            )
            for backend in ("torch", "fairseq2")
        }
    assert batches["torch"] == batches["fairseq2"]
    assert "skipping unreadable audio" in caplog.text and "broken.wav" in caplog.text


def test_a_position_saved_by_one_backend_resumes_exactly_with_the_other(
    synthetic_manifest: Path,
) -> None:
    def module(backend: str) -> PretrainDataModule:
        return PretrainDataModule(
            str(synthetic_manifest),
            max_tokens=64_000,
            max_sample_size=24_000,
            backend=backend,  # type: ignore[arg-type]
        )

    reference = _records(module("torch"), epochs=1)[0]
    interrupted = module("torch").train_dataloader()
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    resumed = module("fairseq2").train_dataloader()
    resumed.load_state_dict(interrupted.state_dict())
    rest = [
        (tuple(b.keys), tuple(b.lengths.tolist()), b.waveforms.double().sum().item())
        for b in resumed
    ]
    assert rest == reference[3:]


def test_without_fairseq2_the_module_falls_back_with_a_warning(
    synthetic_manifest: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import emotion_ssl.data.fairseq2_pipeline as pipeline

    def broken() -> None:
        raise ImportError("fairseq2's native library cannot load: libsndfile.so.1 missing")

    monkeypatch.setattr(pipeline, "load_fairseq2_data", broken)
    with caplog.at_level(logging.WARNING):
        module = PretrainDataModule(
            str(synthetic_manifest), max_tokens=64_000, max_sample_size=24_000
        )
    assert (module.backend, module.decoder) == ("torch", "soundfile")
    assert "libsndfile.so.1 missing; loading data with the torch backend" in caplog.text
    assert len(list(module.train_dataloader())) >= 4
