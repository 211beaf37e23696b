"""fairseq data2vec 2.0 / emotion2vec checkpoints: read with torch only, strictly, both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from fairseq_files import tiny_fairseq_file

from emotion_ssl.cli import main
from emotion_ssl.export import load_classifier, load_encoder, read_weights, save_encoder_dir
from emotion_ssl.export.fairseq import (
    FairseqCheckpointError,
    read_fairseq_checkpoint,
    save_fairseq_checkpoint,
)
from emotion_ssl.export.frozen import StateDictMismatchError, build_encoder, validate_weights
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.models.feature_extractor import normalize_waveform


def outputs(encoder: EmotionEncoder, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return encoder(torch.randn(2, 16000, generator=g), torch.tensor([16000, 11000])).frames


# ------------------------------------------------------------------- the golden checkpoint
def test_golden_checkpoint_matches_the_reference_forward(golden_dir: Path) -> None:
    encoder = load_encoder(golden_dir / "emotion2vec_tiny" / "checkpoint.pt")
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    inputs = torch.load(golden_dir / "emotion2vec_tiny" / "inputs.pt")
    expected = torch.load(golden_dir / "emotion2vec_tiny" / "expected.pt")
    with torch.no_grad():
        for wave, ref in zip(inputs["waveforms"], expected["single"], strict=True):
            out = encoder(wave.unsqueeze(0), return_layers=True)
            assert (out.frames[0] - ref["x"]).abs().max() <= 1e-4
            assert (out.utterance[0] - ref["x_mean"]).abs().max() <= 1e-5
            assert (out.tokens[0] - ref["extra_tokens_out"]).abs().max() <= 1e-4
            assert out.layer_results is not None
            shared = torch.stack([f[0] for f in out.layer_results[1:]])  # 1 prenet block
            assert (shared - ref["layer_results"][:, 10:]).abs().max() <= 1e-4
            source = normalize_waveform(wave.unsqueeze(0), torch.tensor([wave.numel()]))[0]
            assert (source - ref["source"]).abs().max() <= 1e-6


def test_released_base_key_list_loads_strictly(golden_dir: Path) -> None:
    """Zeros with exactly the released emotion2vec_base keys and shapes fill base() modules."""
    keys = json.loads((golden_dir / "emotion2vec_base" / "keys.json").read_text())
    state = {e["key"]: torch.zeros(e["shape"]).expand(e["shape"]) for e in keys["state_dict"]}
    assert len(state) == 193
    ckpt = {"model": state, "cfg": {"model": keys["model_conf"]}}
    weights = read_fairseq_checkpoint("emotion2vec_base.pt", loaded=ckpt)
    assert weights.config == EncoderConfig.base()
    validate_weights(weights)  # every key consumed, every parameter filled
    consumed = len(weights.encoder_state) + len(weights.decoder_state or {})
    assert consumed == 193
    assert sum(v.numel() for v in weights.encoder_state.values()) == 93_171_212
    assert sum(v.numel() for v in (weights.decoder_state or {}).values()) == 619_776


# ------------------------------------------------------------------------- round trips
def test_round_trip_fairseq_ours_fairseq(tmp_path: Path) -> None:
    src, encoder = tiny_fairseq_file(tmp_path / "src.pt", teacher_shift=0.5)
    assert main(["import-fairseq", str(src), str(tmp_path / "ours")]) == 0
    assert main(["export-fairseq", str(tmp_path / "ours"), str(tmp_path / "back.pt")]) == 0
    first, second = read_fairseq_checkpoint(src), read_fairseq_checkpoint(tmp_path / "back.pt")
    for a, b in (
        (first.encoder_state, second.encoder_state),
        (first.decoder_state, second.decoder_state),
        (first.teacher_state, second.teacher_state),
    ):
        assert a is not None and b is not None and a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.config == first.config
    raw_src, raw_back = torch.load(src), torch.load(tmp_path / "back.pt")
    assert raw_src["model"].keys() == raw_back["model"].keys()  # same fairseq layout


def test_imported_folder_gives_identical_outputs(tmp_path: Path) -> None:
    src, encoder = tiny_fairseq_file(tmp_path / "src.pt")
    save_encoder_dir(tmp_path / "ours", read_fairseq_checkpoint(src))
    assert torch.equal(outputs(load_encoder(tmp_path / "ours")), outputs(encoder))
    assert torch.equal(outputs(load_encoder(src)), outputs(encoder))
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert EncoderConfig.from_dict(config["encoder"]) == EncoderConfig.tiny()  # config alone
    assert config["frame_rate"] == 50.0 and config["feature_dim"] == 64


# ------------------------------------------------------------------------------ errors
def test_a_missing_key_is_named(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "src.pt")
    ckpt = torch.load(path)
    del ckpt["model"]["blocks.1.mlp.fc2.bias"]
    torch.save(ckpt, path)
    with pytest.raises(
        StateDictMismatchError, match=r"missing keys \['context.blocks.1.mlp.fc2.bias'\]"
    ):
        load_encoder(path)


def test_an_extra_key_is_named(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(
        tmp_path / "src.pt", extra={"modality_encoders.AUDIO.mystery": torch.zeros(3)}
    )
    with pytest.raises(
        FairseqCheckpointError, match=r"unexpected keys .*modality_encoders.AUDIO.mystery"
    ):
        load_encoder(path)


def test_a_wrong_shape_is_named(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "src.pt")
    ckpt = torch.load(path)
    ckpt["model"]["blocks.0.attn.qkv.weight"] = torch.zeros(10, 64)
    torch.save(ckpt, path)
    with pytest.raises(
        StateDictMismatchError, match=r"context.blocks.0.attn.qkv.weight: file \(10, 64\)"
    ):
        load_encoder(path)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "src.pt")
    ckpt = torch.load(path)
    ckpt["cfg"]["model"]["layer_norm_first"] = True
    torch.save(ckpt, path)
    with pytest.raises(FairseqCheckpointError, match="layer_norm_first=true"):
        read_fairseq_checkpoint(path)


# ---------------------------------------------------------------------------- variants
def test_data2vec_style_checkpoint_without_utterance_tokens(tmp_path: Path) -> None:
    config = replace(EncoderConfig.tiny(), num_utterance_tokens=0)
    path, encoder = tiny_fairseq_file(tmp_path / "d2v.pt", config)
    assert not any("extra_tokens" in k for k in torch.load(path)["model"])
    loaded = load_encoder(path)
    assert loaded.config.num_utterance_tokens == 0
    assert torch.equal(outputs(loaded), outputs(encoder))


def test_emotion2vec_plus_classifier_and_labels(tmp_path: Path) -> None:
    labels = ["angry", "happy", "neutral", "sad"]
    head = {"proj.weight": torch.randn(4, 64), "proj.bias": torch.randn(4)}
    path, _ = tiny_fairseq_file(tmp_path / "plus.pt", extra=head)
    (tmp_path / "tokens.txt").write_text("\n".join(labels) + "\n")
    weights = read_fairseq_checkpoint(path)
    assert weights.labels == labels
    assert weights.head_state is not None and torch.equal(
        weights.head_state["proj.weight"], head["proj.weight"]
    )
    save_encoder_dir(tmp_path / "ours", weights)
    again = read_weights(tmp_path / "ours")
    assert again.labels == labels and again.head_config == weights.head_config
    encoder, classifier, names = load_classifier(tmp_path / "ours")
    assert names == labels
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(1, 16000, generator=g)
    with torch.no_grad():
        out = encoder(wave)
        expected = out.utterance @ head["proj.weight"].t() + head["proj.bias"]
        assert torch.allclose(classifier(out.frames, out.padding_mask), expected, atol=1e-5)
    (tmp_path / "tokens.txt").write_text("a\nb\n")
    with pytest.raises(FairseqCheckpointError, match="2 labels for a classifier with 4 outputs"):
        read_fairseq_checkpoint(path)


def test_fp16_checkpoint_loads_as_fp32(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "half.pt", dtype=torch.float16)
    weights = read_fairseq_checkpoint(path)
    assert weights.source_dtype == "float16"
    assert all(v.dtype == torch.float32 for v in weights.encoder_state.values())
    rounded = {k: v.half().float() for k, v in encoder.state_dict().items()}
    assert all(torch.equal(weights.encoder_state[k], rounded[k]) for k in rounded)


class ConfigLike(Mapping[str, Any]):
    """Stands in for an omegaconf DictConfig: a mapping object that plain unpickling refuses."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return ConfigLike(value) if isinstance(value, dict) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_pickled_config_object_needs_trust_and_then_loads(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "src.pt")
    ckpt = torch.load(path)
    ckpt["cfg"] = ConfigLike(ckpt["cfg"])
    torch.save(ckpt, path)
    with pytest.raises(FairseqCheckpointError, match="trust_pickle=True"):
        read_fairseq_checkpoint(path)
    weights = read_fairseq_checkpoint(path, trust_pickle=True)
    assert weights.config == EncoderConfig.tiny()
    assert torch.equal(outputs(build_encoder(weights).eval()), outputs(encoder))


def test_teacher_from_ema_both_layouts(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "ema.pt", teacher_shift=0.25)
    teacher = load_encoder(path, which="teacher")
    for k, v in encoder.context.state_dict().items():
        assert torch.allclose(teacher.context.state_dict()[k], v + 0.25), k
    # ema_encoder_only: _ema holds the shared blocks alone, keys "0.attn.qkv.weight", ...
    ckpt = torch.load(path)
    ckpt["model"]["_ema"] = {
        k[len("blocks.") :]: v for k, v in ckpt["model"]["_ema"].items() if k.startswith("blocks.")
    }
    torch.save(ckpt, path)
    teacher = load_encoder(path, which="teacher")
    state = teacher.context.state_dict()
    assert torch.allclose(
        state["blocks.0.attn.qkv.weight"], encoder.context.blocks[0].attn.qkv.weight + 0.25
    )
    assert torch.equal(state["prenet.0.attn.qkv.weight"], encoder.context.prenet[0].attn.qkv.weight)


def test_fairseq_file_written_by_us_loads_with_weights_only(tmp_path: Path) -> None:
    src, _ = tiny_fairseq_file(tmp_path / "src.pt")
    weights = read_fairseq_checkpoint(src)
    out = save_fairseq_checkpoint(tmp_path / "out.pt", weights.config, weights.encoder_state)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["cfg"]["model"]["modalities"]["audio"]["num_extra_tokens"] == 10
    assert "_ema" not in ckpt["model"]
