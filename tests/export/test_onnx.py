"""ONNX export: onnxruntime gives PyTorch's outputs on padded batches of any size and length."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_ssl.export import load_encoder
from emotion_ssl.export.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    MaskedEncoder,
    OnnxEncoder,
    export_onnx,
)
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from tests.conftest import GOLDEN, require_shared

TOLERANCE = 1e-4
# export_onnx traces a batch of 2 with 2 x 400 + 320 = 1120 samples (a padded second row);
# every batch below has another size and other lengths
TRACED_SHAPE = (2, 1120)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def require_onnx() -> None:
    for package in ("onnxruntime", "onnxscript"):
        pytest.importorskip(
            package,
            reason=f"{package} is not installed (a dev dependency: pip install -e '.[dev]')",
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmotionEncoder, Path, float]:
    """A random tiny encoder, its ONNX file and the export's seconds."""
    require_onnx()
    torch.manual_seed(0)
    encoder = EmotionEncoder(EncoderConfig.tiny()).eval()
    start = time.perf_counter()
    path = export_onnx(encoder, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return encoder, path, time.perf_counter() - start


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmotionEncoder, Path]:
    """The golden tiny checkpoint (the reference's weights) and its ONNX file."""
    checkpoint = require_shared(GOLDEN / "emotion2vec_tiny" / "checkpoint.pt")
    require_onnx()
    encoder = load_encoder(checkpoint)
    return encoder, export_onnx(encoder, tmp_path_factory.mktemp("onnx") / "golden.onnx")


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B, max length) float32 noise, zero after each length; (B,) int64 lengths."""
    rng = np.random.default_rng(seed)
    waveforms = np.zeros((len(lengths), max(lengths)), dtype=np.float32)
    for row, length in enumerate(lengths):
        waveforms[row, :length] = rng.standard_normal(length)
    return waveforms, np.asarray(lengths, dtype=np.int64)


def max_differences(
    encoder: EmotionEncoder, runner: OnnxEncoder, waveforms: np.ndarray, lengths: np.ndarray
) -> dict[str, float]:
    """Run both; the padding masks must be equal; max |onnx - torch| per output on valid
    frames (padded frames carry no meaning)."""
    with torch.no_grad():
        ref = encoder(torch.from_numpy(waveforms), torch.from_numpy(lengths))
    out = runner(waveforms, lengths)
    np.testing.assert_array_equal(out["frame_padding_mask"], ref.padding_mask.numpy())
    valid = ~ref.padding_mask.numpy()  # (B, T)
    assert out["frames"].shape == tuple(ref.frames.shape)
    assert out["tokens"].shape == tuple(ref.tokens.shape)
    return {
        "frames": float(np.abs(out["frames"][valid] - ref.frames.numpy()[valid]).max()),
        "utterance": float(np.abs(out["utterance"] - ref.utterance.numpy()).max()),
        "tokens": float(np.abs(out["tokens"] - ref.tokens.numpy()).max()),
    }


# ------------------------------------------------------------------ the wrapper, in torch
def test_masked_encoder_equals_the_eager_forward() -> None:
    """The always-masked forward gives the eager outputs, padded or not (all-False mask)."""
    torch.manual_seed(0)
    encoder = EmotionEncoder(EncoderConfig.tiny()).eval()
    for lengths in ([16000, 9321, 4417], [8000, 8000]):
        waveforms, lengths_np = padded_batch(lengths)
        w, L = torch.from_numpy(waveforms), torch.from_numpy(lengths_np)
        padding_mask = torch.arange(w.size(1)) >= L.unsqueeze(1)  # (B, S)
        with torch.no_grad():
            ref = encoder(w, L)
            frames, frame_padding, utterance, tokens = MaskedEncoder(encoder)(w, padding_mask)
        assert torch.equal(frame_padding, ref.padding_mask)
        valid = ~ref.padding_mask
        torch.testing.assert_close(frames[valid], ref.frames[valid], rtol=0, atol=1e-6)
        torch.testing.assert_close(utterance, ref.utterance, rtol=0, atol=1e-6)
        torch.testing.assert_close(tokens, ref.tokens, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the exported file
def test_export_is_small_and_documented(tiny: tuple[EmotionEncoder, Path, float]) -> None:
    import onnx

    encoder, path, seconds = tiny
    print(f"exporting the tiny encoder took {seconds:.0f} s")  # reported, never asserted
    weight_bytes = 4 * sum(p.numel() for p in encoder.parameters())  # 1.07 MB
    assert weight_bytes <= path.stat().st_size <= 1.5 * weight_bytes + 200_000

    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 18

    def axes(values: object) -> dict[str, list[str | int]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values  # type: ignore[attr-defined]
        }

    assert axes(model.graph.input) == {
        "waveforms": ["batch", "samples"],
        "padding_mask": ["batch", "samples"],
    }
    assert axes(model.graph.output) == {
        "frames": ["batch", "frames", 64],
        "frame_padding_mask": ["batch", "frames"],
        "utterance": ["batch", 64],
        "tokens": ["batch", 10, 64],
    }
    assert [v.name for v in model.graph.input] == list(INPUT_NAMES)
    assert [v.name for v in model.graph.output] == list(OUTPUT_NAMES)
    runner = OnnxEncoder(path)
    assert runner.metadata["min_samples"] == "400"
    assert runner.metadata["frame_rate"] == "50.0"
    assert EncoderConfig.from_dict(json.loads(runner.metadata["encoder"])) == encoder.config


def test_padded_batch_matches_pytorch(tiny: tuple[EmotionEncoder, Path, float]) -> None:
    encoder, path, _ = tiny
    waveforms, lengths = padded_batch([16000, 9321, 4417, 12001])
    assert waveforms.shape != TRACED_SHAPE
    diffs = max_differences(encoder, OnnxEncoder(path, num_threads=1), waveforms, lengths)
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize(
    "lengths",
    [
        [23456],  # one row, no padding
        [400],  # one row of one frame (the shortest input)
        [7000, 400, 719, 720, 3333, 5000],  # six rows: one-frame rows, two-frame rows
        [32000, 32000, 32000],  # full rows only: an all-False mask
    ],
    ids=["1x23456", "1x400", "6-rows", "3-unpadded"],
)
def test_batch_and_length_axes_are_dynamic(
    tiny: tuple[EmotionEncoder, Path, float], lengths: list[int]
) -> None:
    encoder, path, _ = tiny
    waveforms, lengths_np = padded_batch(lengths, seed=len(lengths))
    diffs = max_differences(encoder, OnnxEncoder(path, num_threads=1), waveforms, lengths_np)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_runner_rejects_lengths_the_encoder_rejects(
    tiny: tuple[EmotionEncoder, Path, float],
) -> None:
    runner = OnnxEncoder(tiny[1], num_threads=1)
    waveforms, _ = padded_batch([1000, 1000])
    with pytest.raises(ValueError, match=r"in \[400, 1000\] samples"):
        runner(waveforms, np.array([1000, 399]))
    with pytest.raises(ValueError, match=r"in \[400, 1000\] samples"):
        runner(waveforms, np.array([1001, 1000]))
    with pytest.raises(ValueError, match="waveforms must be"):
        runner(waveforms[0], np.array([1000]))


def test_opsets_below_18_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 17"):
        export_onnx(EmotionEncoder(EncoderConfig.tiny()), tmp_path / "x.onnx", opset=17)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_golden_checkpoint_matches_pytorch(golden: tuple[EmotionEncoder, Path]) -> None:
    """The reference's weights on the golden clips (16000, 23456, 40000 samples) as one padded
    batch, and the shortest clip alone."""
    encoder, path = golden
    inputs = torch.load(GOLDEN / "emotion2vec_tiny" / "inputs.pt")
    clips = [w.numpy() for w in inputs["waveforms"]]
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    waveforms = np.zeros((len(clips), lengths.max()), dtype=np.float32)
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = clip
    runner = OnnxEncoder(path, num_threads=1)
    diffs = max_differences(encoder, runner, waveforms, lengths)
    assert max(diffs.values()) <= TOLERANCE, diffs
    diffs = max_differences(encoder, runner, waveforms[:1, :16000], lengths[:1])
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_cli_export_format_onnx(tmp_path: Path) -> None:
    """`emotion-ssl export SRC OUT --format onnx` writes the folder and a matching encoder.onnx."""
    from emotion_ssl.cli import main
    from emotion_ssl.export import save_encoder_dir
    from emotion_ssl.export.weights import PretrainedWeights

    torch.manual_seed(0)
    config = EncoderConfig.tiny()
    encoder = EmotionEncoder(config).eval()
    source = save_encoder_dir(
        tmp_path / "src", PretrainedWeights("t", config, encoder.state_dict())
    )
    assert main(["export", str(source), str(tmp_path / "out"), "--format", "onnx"]) == 0
    runner = OnnxEncoder(tmp_path / "out" / "encoder.onnx")
    waves = np.random.default_rng(0).standard_normal((2, 9000)).astype(np.float32) * 0.1
    lengths = np.array([9000, 5000])
    got = runner(waves, lengths)
    with torch.no_grad():
        want = encoder(torch.from_numpy(waves), torch.from_numpy(lengths))
    T = int(want.lengths[1])
    assert np.abs(got["frames"][1, :T] - want.frames[1, :T].numpy()).max() <= 1e-4
