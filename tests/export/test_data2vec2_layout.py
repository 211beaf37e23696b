"""data2vec 2.0 base's layout (`prenet_depth: 0, depth: 12`) and its mapping into emotion2vec's
4 prenet + 8 shared blocks (`resplit_blocks`): weights in the right blocks, the same forward,
strict about every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fairseq_files import block_state, data2vec2_config, data2vec2_keys, tiny_data2vec2_file
from torch import Tensor

from emotion_ssl.export import load_encoder, read_weights
from emotion_ssl.export.fairseq import (
    AUDIO_PREFIX,
    FairseqCheckpointError,
    fairseq_model_config,
    fairseq_state_dict,
    read_fairseq_checkpoint,
)
from emotion_ssl.export.frozen import (
    StateDictMismatchError,
    build_encoder,
    resplit_blocks,
    validate_weights,
)
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.models.decoder import ConvDecoder
from emotion_ssl.models.transformer import TransformerBlock, attention_bias

A = AUDIO_PREFIX


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_weights_land_in_the_right_blocks(tmp_path: Path) -> None:
    """data2vec 2.0 blocks.0..1 -> prenet 0..1, blocks.2..3 -> shared 0..1 (base: 0..3 / 4..11)."""
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", depth=4, teacher_shift=0.5)
    weights = read_weights(path)
    assert (weights.config.prenet_depth, weights.config.depth) == (0, 4)
    split = resplit_blocks(weights, 2)
    assert (split.config.prenet_depth, split.config.depth) == (2, 2)
    validate_weights(split)
    encoder = build_encoder(split)
    teacher = build_encoder(split, "teacher").context
    ema = file["_ema"]
    for source, ours in [(0, "prenet.0"), (1, "prenet.1"), (2, "blocks.0"), (3, "blocks.1")]:
        for key, value in block_state(file, f"blocks.{source}.").items():
            assert torch.equal(encoder.context.state_dict()[f"{ours}.{key}"], value), (source, key)
        for key, value in block_state(ema, f"blocks.{source}.").items():
            assert torch.equal(teacher.state_dict()[f"{ours}.{key}"], value), (source, key)
    for p in ("weight", "bias"):  # the prenet's input norm is data2vec 2.0's context_encoder.norm
        assert torch.equal(
            getattr(encoder.context.prenet_norm, p), file[f"{A}context_encoder.norm.{p}"]
        )
        assert torch.equal(getattr(teacher.prenet_norm, p), ema[f"{A}context_encoder.norm.{p}"])
    assert torch.equal(teacher.alibi_scale, ema[f"{A}alibi_scale"])
    assert teacher.utterance_tokens.numel() == 0


def reference_forward(
    file: dict[str, Tensor],
    config: EncoderConfig,
    cnn: EmotionEncoder,
    waves: Tensor,
    lengths: Tensor,
) -> tuple[Tensor, list[Tensor]]:
    """data2vec 2.0's forward assembled by hand from the file's tensors, by their fairseq
    names: CNN features and positional conv (not remapped, taken from `cnn`), then
    context_encoder.norm, then blocks.0..N-1 in order with the shared scaled ALiBi bias."""
    features, padding, _ = cnn.local_features(waves, lengths)
    x = features + cnn.context.pos_conv(features, padding)
    T = x.size(1)
    scale = file[f"{A}alibi_scale"].clamp_min(0).view(-1)
    bias = attention_bias(torch.arange(T).unsqueeze(0), padding, cnn.context.alibi_slopes, scale, 0)
    D = config.embed_dim
    x = F.layer_norm(
        x,
        (D,),
        file[f"{A}context_encoder.norm.weight"],
        file[f"{A}context_encoder.norm.bias"],
        config.norm_eps,
    )
    ffn_outputs = []
    for i in range(config.depth):
        block = TransformerBlock(D, config.num_heads, config.mlp_ratio, config.norm_eps, 0, 0, 0, 0)
        block.load_state_dict(block_state(file, f"blocks.{i}."))
        x, ffn = block.eval()(x, bias)
        ffn_outputs.append(ffn)
    return x, ffn_outputs


def test_loaded_encoder_equals_a_hand_assembled_forward(tmp_path: Path) -> None:
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", depth=4)
    g = torch.Generator().manual_seed(3)
    waves, lengths = torch.randn(2, 16000, generator=g), torch.tensor([16000, 11000])
    as_stored = load_encoder(path)  # 0 prenet + 4 shared
    resplit = build_encoder(resplit_blocks(read_weights(path), 2)).eval()  # 2 + 2
    with torch.no_grad():
        expected, expected_ffn = reference_forward(
            file, data2vec2_config(4), as_stored, waves, lengths
        )
        for encoder in (as_stored, resplit):
            out = encoder(waves, lengths, return_layers=True)
            valid = ~out.padding_mask
            assert torch.equal(out.frames[valid], expected[valid])
            assert out.layer_results is not None and len(out.layer_results) == 4
            for ours, ref in zip(out.layer_results, expected_ffn, strict=True):
                assert torch.equal(ours[valid], ref[valid])


def test_data2vec2_base_layout_maps_onto_the_base_preset() -> None:
    """At base size (shapes of base_audio_only_task.yaml, on the meta device): the 12 shared
    blocks become base()'s 4 prenet + 8 shared, every key used, every parameter filled."""
    config = data2vec2_config(base=True)
    with torch.device("meta"):
        encoder, decoder = EmotionEncoder(config), ConvDecoder(config)
        teacher = encoder.context.state_dict()
    state = fairseq_state_dict(encoder.state_dict(), decoder.state_dict(), teacher)
    assert set(state) - {"_ema"} == data2vec2_keys(config)
    ckpt = {"model": state, "cfg": {"model": fairseq_model_config(config)}}
    weights = read_fairseq_checkpoint("data2vec2_base.pt", loaded=ckpt)
    assert weights.config == config
    split = resplit_blocks(weights, 4)
    assert (
        split.config.architecture_differences(
            EncoderConfig.base(), ignore=("num_utterance_tokens",)
        )
        == []
    )
    validate_weights(split)
    assert {k.split(".")[2] for k in split.encoder_state if k.startswith("context.prenet.")} == {
        "0",
        "1",
        "2",
        "3",
    }
    assert split.encoder_state["context.prenet.3.mlp.fc2.bias"] is state["blocks.3.mlp.fc2.bias"]
    assert split.encoder_state["context.blocks.0.norm1.weight"] is state["blocks.4.norm1.weight"]
    assert (
        split.encoder_state["context.blocks.7.attn.qkv.weight"]
        is state["blocks.11.attn.qkv.weight"]
    )
    assert split.teacher_state is not None
    assert split.teacher_state["prenet.0.attn.qkv.bias"] is state["_ema"]["blocks.0.attn.qkv.bias"]


def test_resplit_refuses_an_empty_shared_stack(tmp_path: Path) -> None:
    path, _ = tiny_data2vec2_file(tmp_path / "d2v.pt")
    with pytest.raises(ValueError, match="cannot split 3 blocks into 3 prenet blocks"):
        resplit_blocks(read_weights(path), 3)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("blocks.2.mlp.fc2.bias", "context.blocks.2.mlp.fc2.bias"),
        (f"{A}context_encoder.norm.weight", "context.prenet_norm.weight"),
        (f"{A}alibi_scale", "context.alibi_scale"),
    ],
)
def test_a_missing_key_is_named(tmp_path: Path, drop: str, named: str) -> None:
    path, _ = tiny_data2vec2_file(tmp_path / "d2v.pt", drop=(drop,))
    with pytest.raises(StateDictMismatchError, match=rf"missing keys \['{re.escape(named)}'\]"):
        validate_weights(read_weights(path))
    with pytest.raises(StateDictMismatchError, match=rf"missing keys \['{re.escape(named)}'\]"):
        load_encoder(path)


@pytest.mark.parametrize(
    ("extra", "error", "named"),
    [  # a block too many, a prenet block in a prenet-less file, a key of no known part
        ("blocks.3.norm1.weight", StateDictMismatchError, "context.blocks.3.norm1.weight"),
        (
            f"{A}context_encoder.blocks.0.norm1.weight",
            StateDictMismatchError,
            "context.prenet.0.norm1.weight",
        ),
        (f"{A}extra_norm.weight", FairseqCheckpointError, f"{A}extra_norm.weight"),
    ],
)
def test_an_extra_key_is_named(tmp_path: Path, extra: str, error: type, named: str) -> None:
    path, _ = tiny_data2vec2_file(tmp_path / "d2v.pt", extra={extra: torch.zeros(64)})
    with pytest.raises(error, match=rf"unexpected keys.*'{re.escape(named)}'"):
        validate_weights(read_weights(path))


def test_an_unknown_teacher_key_is_named(tmp_path: Path) -> None:
    path, _ = tiny_data2vec2_file(tmp_path / "d2v.pt", teacher_shift=0.1)
    ckpt = torch.load(path)
    ckpt["model"]["_ema"][f"{A}decoder.proj.weight"] = torch.zeros(64, 32)
    torch.save(ckpt, path)
    with pytest.raises(FairseqCheckpointError, match=rf"_ema\.{A}decoder\.proj\.weight"):
        read_weights(path)


def test_a_four_dim_alibi_scale_is_upgraded_as_fairseq_does(tmp_path: Path) -> None:
    """fairseq's upgrade_state_dict_named: a (1, H, 1, 1) scale gets the leading layer dim."""
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", teacher_shift=0.5, alibi_scale_4d=True)
    assert file[f"{A}alibi_scale"].shape == (1, 4, 1, 1)
    assert file["_ema"][f"{A}alibi_scale"].shape == (1, 1, 4, 1, 1)  # the teacher's: current
    weights = read_weights(path)
    assert torch.equal(
        weights.encoder_state["context.alibi_scale"], file[f"{A}alibi_scale"].unsqueeze(0)
    )
    validate_weights(weights)
