"""The ONNX Runtime extraction backend: equal to the torch path on padded batches and chunked
audio, an export cache that never serves other weights, and how `auto` decides."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emotion_ssl.cli import main
from emotion_ssl.data.manifest import entry_from_audio_file, write_manifest
from emotion_ssl.export import ort, save_encoder_dir
from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor, read_features
from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.models import EmotionEncoder, EncoderConfig

TOLERANCE = 1e-4
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def encoder() -> EmotionEncoder:
    torch.manual_seed(0)
    return EmotionEncoder(EncoderConfig.tiny()).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, encoder: EmotionEncoder) -> Path:
    """A cache folder holding the encoder's export (each export of tiny takes 10-20 s)."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    ort.cached_onnx(encoder, -1, folder)
    return folder


def recordings(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


def assert_close(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for name in w:
            assert g[name].shape == w[name].shape, name
            assert np.abs(g[name] - w[name]).max() <= TOLERANCE, name


@pytest.fixture
def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every onnxruntime run."""
    runs: list[int] = []
    run = ort.OrtBatchEncoder.__call__

    def counted(self: ort.OrtBatchEncoder, audios: list[np.ndarray]) -> list:  # type: ignore[type-arg]
        runs.append(len(audios))
        return run(self, audios)

    monkeypatch.setattr(ort.OrtBatchEncoder, "__call__", counted)
    return runs


def test_onnxruntime_equals_torch_on_padded_batches_of_unequal_lengths(
    encoder: EmotionEncoder, cache: Path, count_runs: list[int]
) -> None:
    audio = recordings([16000, 5000, 23456, 9100, 12001, 1200, 7000, 400, 16001])
    settings = {"batch_seconds": 3.0, "outputs": ("frames", "utterance", "tokens")}
    extractor = FeatureExtractor(
        encoder, ExtractConfig(**settings, backend="onnxruntime", onnx_cache=str(cache))
    )
    batches = list(
        extractor._batches([s for i, a in enumerate(audio) for s in extractor._segments(i, a)])
    )
    padded = [b for b in batches if len({len(s.audio) for s in b}) > 1]
    assert len(batches) >= 3 and len(padded) >= 2  # several batches of unequal lengths
    got = extractor.extract(audio)
    assert extractor.backend == "onnxruntime"
    assert "within" in extractor.backend_note
    assert sorted(count_runs) == sorted(len(b) for b in batches)  # every batch ran in onnxruntime
    want = FeatureExtractor(encoder, ExtractConfig(**settings)).extract(audio)
    assert_close(got, want)
    # and each clip alone, in torch
    with torch.no_grad():
        for g, clip in zip(got, audio, strict=True):
            alone = encoder(torch.from_numpy(clip).unsqueeze(0))
            assert np.abs(g["frames"] - alone.frames[0].numpy()).max() <= TOLERANCE


def test_chunked_long_audio_through_onnxruntime(
    encoder: EmotionEncoder, cache: Path, count_runs: list[int]
) -> None:
    """A 7.3 s recording in 2 s chunks (0.5 s overlap) next to short clips: the chunks run
    through onnxruntime in padded batches and stitch to the torch path's frames."""
    audio = recordings([116800, 24000, 49600], seed=1)
    settings = {"chunk_seconds": 2.0, "overlap_seconds": 0.5, "batch_seconds": 5.0}
    extractor = FeatureExtractor(
        encoder, ExtractConfig(**settings, backend="onnxruntime", onnx_cache=str(cache))
    )
    assert len(extractor._segments(0, audio[0])) == 5
    got = extractor.extract(audio)
    assert extractor.backend == "onnxruntime" and sum(count_runs) == 5 + 1 + 2
    want = FeatureExtractor(encoder, ExtractConfig(**settings)).extract(audio)
    assert_close(got, want)
    expected = encoder.frame_lengths(torch.tensor([len(a) for a in audio])).tolist()
    assert [g["frames"].shape[0] for g in got] == expected


def test_a_chosen_layer_and_worker_threads_through_onnxruntime(
    encoder: EmotionEncoder, cache: Path
) -> None:
    audio = recordings([16000, 5000, 23456, 9100, 12001, 7000], seed=2)
    settings = {"layer": 1, "batch_seconds": 2.0}
    extractor = FeatureExtractor(
        encoder, ExtractConfig(**settings, workers=2, backend="onnxruntime", onnx_cache=str(cache))
    )
    got = extractor.extract(audio)
    assert extractor.backend == "onnxruntime"
    assert torch.get_num_threads() == 1  # restored
    assert_close(got, FeatureExtractor(encoder, ExtractConfig(**settings)).extract(audio))
    assert len(list(cache.glob("encoder-*.onnx"))) == 2  # one file per layer


def test_the_export_cache_never_serves_other_weights(
    encoder: EmotionEncoder, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, key = ort.cached_onnx(encoder, -1, cache)  # from the fixture's export

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(ort.onnx_export, "export_onnx", no_export)
    assert ort.cached_onnx(encoder, -1, cache) == (path, key)  # same weights: reused
    # a copy of the same weights hashes the same; one changed weight, or the layer, does not
    same = copy.deepcopy(encoder)
    assert ort.graph_key(same) == key
    other = copy.deepcopy(encoder)
    with torch.no_grad():
        other.context.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    other_key = ort.graph_key(other)
    assert other_key != key and ort.graph_key(encoder, layer=0) != key
    with pytest.raises(AssertionError, match="exported again"):
        ort.cached_onnx(other, -1, cache)  # would export: the cached file is not served
    # a file under another key's name (renamed, or a stale copy) is refused when opened
    impostor = cache / f"encoder-{other_key}.onnx"
    shutil.copy(path, impostor)
    try:
        with pytest.raises(ValueError, match="made from other weights"):
            ort.OrtBatchEncoder(impostor, other_key)
    finally:
        impostor.unlink()


def test_auto_keeps_torch_where_onnxruntime_cannot_pay_off(
    encoder: EmotionEncoder, cache: Path, tmp_path: Path
) -> None:
    audio = recordings([16000, 8000])

    def auto(planned: float, cache_dir: Path, **settings: object) -> FeatureExtractor:
        extractor = FeatureExtractor(
            encoder,
            ExtractConfig(backend="auto", onnx_cache=str(cache_dir), **settings),  # type: ignore[arg-type]
        )
        extractor.planned_seconds = planned  # what extract_manifest sets: the whole job
        extractor.extract(audio)
        return extractor

    small = auto(0.0, cache)  # 1.5 s of audio, the export cached
    assert small.backend == "torch" and "below the 600 s" in small.backend_note
    uncached = auto(1000.0, tmp_path / "empty")  # 1000 s: enough for a cached export only
    assert uncached.backend == "torch" and "below the 1800 s" in uncached.backend_note
    assert not (tmp_path / "empty").exists()  # nothing exported
    cached = auto(1000.0, cache)
    assert "(auto: first batch" in cached.backend_note  # tried: the export was cached
    bf16 = auto(1e6, cache, dtype="bfloat16")
    assert bf16.backend == "torch" and "not bfloat16" in bf16.backend_note
    with pytest.raises(ValueError, match="float32, not bfloat16"):
        FeatureExtractor(encoder, ExtractConfig(backend="onnxruntime", dtype="bfloat16")).extract(
            audio
        )
    with pytest.raises(ValueError, match="backend must be"):
        ExtractConfig(backend="tensorrt")  # type: ignore[arg-type]


@pytest.mark.parametrize("slower", ["torch", "onnxruntime"])
def test_auto_picks_the_faster_backend_on_the_first_batch(
    encoder: EmotionEncoder, cache: Path, monkeypatch: pytest.MonkeyPatch, slower: str
) -> None:
    """The trial times both backends on the first batch; one is slowed down by 0.3 s per
    batch here, so the choice is known."""
    monkeypatch.setattr(ort, "AUTO_MIN_SECONDS", 0.0)
    monkeypatch.setattr(ort, "AUTO_MIN_SECONDS_CACHED", 0.0)
    if slower == "onnxruntime":
        run = ort.OrtBatchEncoder.__call__

        def slow_ort(self: ort.OrtBatchEncoder, audios: list[np.ndarray]) -> list:  # type: ignore[type-arg]
            time.sleep(0.3)
            return run(self, audios)

        monkeypatch.setattr(ort.OrtBatchEncoder, "__call__", slow_ort)
    else:
        encode = FeatureExtractor._encode

        def slow_torch(self: FeatureExtractor, batch: list) -> list:  # type: ignore[type-arg]
            if self._onnx is None:
                time.sleep(0.3)
            return encode(self, batch)

        monkeypatch.setattr(FeatureExtractor, "_encode", slow_torch)
    audio = recordings([16000, 5000, 23456, 9100], seed=3)
    extractor = FeatureExtractor(
        encoder, ExtractConfig(batch_seconds=3.0, backend="auto", onnx_cache=str(cache))
    )
    got = extractor.extract(audio)
    faster = "torch" if slower == "onnxruntime" else "onnxruntime"
    assert extractor.backend == faster
    assert extractor.backend_note.startswith(f"{faster} (auto: first batch")
    assert "onnxruntime" in extractor.backend_note and "torch" in extractor.backend_note
    assert_close(got, FeatureExtractor(encoder, ExtractConfig(batch_seconds=3.0)).extract(audio))


def test_cli_extract_backend_onnxruntime(
    encoder: EmotionEncoder, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = recordings([16000, 8000, 24000], seed=4)
    entries = []
    for i, clip in enumerate(audio):
        path = tmp_path / "wav" / f"utt{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, clip, 16000, subtype="FLOAT")
        entries.append(entry_from_audio_file(path, key=f"utt{i}", corpus="test"))
    manifest = write_manifest(tmp_path / "manifest.jsonl", entries)
    weights = PretrainedWeights(
        path="test", config=encoder.config, encoder_state=encoder.state_dict()
    )
    folder = save_encoder_dir(tmp_path / "encoder", weights)
    args = ["extract", "--encoder", str(folder), "--manifest", str(manifest), "--no-progress"]
    cached = ["--onnx-cache", str(cache)]
    assert main([*args, "--out", str(tmp_path / "ort"), "--backend", "onnxruntime", *cached]) == 0
    assert "backend: onnxruntime (requested; first batch within" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "torch"), "--backend", "torch"]) == 0
    got, want = read_features(tmp_path / "ort"), read_features(tmp_path / "torch")
    assert got.keys() == want.keys() == {"utt0", "utt1", "utt2"}
    for key in want:
        assert np.abs(got[key] - want[key]).max() <= TOLERANCE
