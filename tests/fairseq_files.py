"""Test helper: small fairseq-layout checkpoints (importable from every test folder, since
pytest puts tests/ on sys.path for its conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emotion_ssl.export.fairseq import AUDIO_PREFIX, fairseq_model_config, fairseq_state_dict
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.models.decoder import ConvDecoder


def tiny_fairseq_file(
    path: Path,
    config: EncoderConfig | None = None,
    *,
    seed: int = 0,
    teacher_shift: float | None = None,
    dtype: torch.dtype = torch.float32,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, EmotionEncoder]:
    """A fairseq-layout checkpoint of a random tiny encoder (+ decoder, optional _ema)."""
    config = config or EncoderConfig.tiny()
    torch.manual_seed(seed)
    encoder = EmotionEncoder(config).eval()
    decoder = ConvDecoder(config)
    teacher = None
    if teacher_shift is not None:
        teacher = {k: v + teacher_shift for k, v in encoder.context.state_dict().items()}
    state = fairseq_state_dict(encoder.state_dict(), decoder.state_dict(), teacher)
    state = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    state.update(extra or {})
    ckpt = {
        "model": state,
        "cfg": {"model": fairseq_model_config(config), "task": {"normalize": True}},
    }
    torch.save(ckpt, path)
    return path, encoder


# ---------------------------------------------------------------- data2vec 2.0 base layout
def data2vec2_config(depth: int = 3, base: bool = False) -> EncoderConfig:
    """data2vec 2.0's layout (fairseq `examples/data2vec/config/v2/base_audio_only_task.yaml`:
    `depth: 12, prenet_depth: 0`, no extra tokens) at tiny size with `depth` blocks (3 =
    tiny()'s 1 prenet + 2 shared), or at base size (12 blocks)."""
    size = EncoderConfig.base() if base else EncoderConfig.tiny()
    return replace(size, prenet_depth=0, depth=12 if base else depth, num_utterance_tokens=0)


def data2vec2_keys(config: EncoderConfig, teacher: bool = False) -> set[str]:
    """The fairseq keys of a data2vec 2.0 model with `config` (prenet_depth 0), written out from
    fairseq's modules: AudioEncoder (ConvFeatureExtractionModel, project_features Sequential,
    relative_positional_encoder Sequential, BlockEncoder with its norm and no blocks, Decoder1d),
    Data2VecMultiModel.blocks (AltBlock). `teacher`: the EMA copy's keys (no CNN, projection or
    decoder: `make_target_model` drops them)."""
    A = AUDIO_PREFIX
    block = [
        f"{part}.{p}"
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    ]
    keys = {
        f"{A}relative_positional_encoder.{i}.0.{p}" for i in range(1, 6) for p in ("weight", "bias")
    }
    keys |= {f"{A}alibi_scale", f"{A}context_encoder.norm.weight", f"{A}context_encoder.norm.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(config.depth) for k in block}
    if teacher:
        return keys
    for i in range(len(config.conv_layers)):
        keys |= {
            f"{A}local_encoder.conv_layers.{i}.0.weight",
            f"{A}local_encoder.conv_layers.{i}.2.1.weight",
            f"{A}local_encoder.conv_layers.{i}.2.1.bias",
        }
    keys |= {f"{A}project_features.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    keys |= {
        f"{A}decoder.blocks.{i}.0.{p}"
        for i in range(config.decoder_layers)
        for p in ("weight", "bias")
    }
    keys |= {f"{A}decoder.proj.weight", f"{A}decoder.proj.bias"}
    return keys


def tiny_data2vec2_file(
    path: Path,
    *,
    depth: int = 3,
    seed: int = 0,
    teacher_shift: float | None = None,
    ema_encoder_only: bool = False,
    alibi_scale_4d: bool = False,
    extra: Mapping[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> tuple[Path, dict[str, Any]]:
    """A data2vec 2.0 base-layout fairseq checkpoint at tiny size: `blocks.{0..depth-1}`,
    `context_encoder.norm` without `context_encoder.blocks`, no `extra_tokens`, a decoder, and
    with `teacher_shift` an `_ema` (the whole EMA model as `ema_encoder_only: false` saves it,
    or with `ema_encoder_only` the blocks alone, keys "0.attn.qkv.weight", ...). Every tensor
    is random, LayerNorm weights included, so a misplaced one changes the outputs.
    `alibi_scale_4d` stores the ALiBi scale as older files do, (1, H, 1, 1); `extra` adds
    keys and `drop` removes keys of `model`. Returns the path and the file's `model` dict."""
    config = data2vec2_config(depth)
    torch.manual_seed(seed)
    encoder, decoder = EmotionEncoder(config), ConvDecoder(config)
    with torch.no_grad():
        for p in [*encoder.parameters(), *decoder.parameters()]:
            p.add_(0.1 * torch.randn_like(p))  # norms too: a swapped norm must show
    teacher = None
    if teacher_shift is not None:
        teacher = {k: v + teacher_shift for k, v in encoder.context.state_dict().items()}
    state: dict[str, Any] = fairseq_state_dict(encoder.state_dict(), decoder.state_dict(), teacher)
    assert set(state) - {"_ema"} == data2vec2_keys(config)  # the layout, written out by hand
    if teacher is not None:
        assert set(state["_ema"]) == data2vec2_keys(config, teacher=True)
        if ema_encoder_only:  # fairseq: model_copy = model_copy.blocks
            state["_ema"] = {
                k.removeprefix("blocks."): v
                for k, v in state["_ema"].items()
                if k.startswith("blocks.")
            }
    if alibi_scale_4d:
        state[f"{AUDIO_PREFIX}alibi_scale"] = state[f"{AUDIO_PREFIX}alibi_scale"].squeeze(0)
    for key in drop:
        del state[key]
    state.update(extra or {})
    model_cfg = fairseq_model_config(
        config, ema_encoder_only=ema_encoder_only, average_top_k_layers=min(8, depth)
    )
    del model_cfg["normalize"]  # data2vec 2.0 keeps it in the task config
    ckpt = {"model": state, "cfg": {"model": model_cfg, "task": {"normalize": True}}}
    torch.save(ckpt, path)
    return path, {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}


def block_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
