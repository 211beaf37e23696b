"""Key and config mapping between fairseq data2vec 2.0 / emotion2vec checkpoints and ours.

fairseq layout (SPEC section 8): `ckpt["model"]` is the state dict, `ckpt["cfg"]["model"]`
the model config. Prefix A = `modality_encoders.AUDIO.`:

| fairseq key | emotion-ssl key (EmotionEncoder / ConvDecoder) |
|---|---|
| A.local_encoder.conv_layers.{i}.0.weight | feature_extractor.layers.{i}.conv.weight |
| A.local_encoder.conv_layers.{i}.2.1.{weight,bias} | feature_extractor.layers.{i}.norm.* |
| A.project_features.1.* | feature_norm.* |
| A.project_features.2.* | feature_proj.* |
| A.relative_positional_encoder.{i}.0.* (i = 1..5) | context.pos_conv.layers.{i-1}.* |
| A.extra_tokens | context.utterance_tokens |
| A.alibi_scale | context.alibi_scale |
| A.context_encoder.norm.* | context.prenet_norm.* |
| A.context_encoder.blocks.{i}.* | context.prenet.{i}.* |
| blocks.{i}.* | context.blocks.{i}.* |
| A.decoder.blocks.{i}.0.* | (decoder) convs.{i}.* |
| A.decoder.proj.* | (decoder) proj.* |
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from emotion_ssl.models.config import EncoderConfig

AUDIO_PREFIX = "modality_encoders.AUDIO."

_ENCODER_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"local_encoder\.conv_layers\.(\d+)\.0\.weight", r"feature_extractor.layers.\1.conv.weight"),
    (
        r"local_encoder\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"feature_extractor.layers.\1.norm.\2",
    ),
    (r"project_features\.1\.(weight|bias)", r"feature_norm.\1"),
    (r"project_features\.2\.(weight|bias)", r"feature_proj.\1"),
    (
        r"relative_positional_encoder\.(\d+)\.0\.(weight|bias)",
        lambda m: f"context.pos_conv.layers.{int(m[1]) - 1}.{m[2]}",
    ),
    (r"extra_tokens", "context.utterance_tokens"),
    (r"alibi_scale", "context.alibi_scale"),
    (r"context_encoder\.norm\.(weight|bias)", r"context.prenet_norm.\1"),
    (r"context_encoder\.blocks\.(\d+)\.(.+)", r"context.prenet.\1.\2"),
]
_SHARED_RULE = (r"blocks\.(\d+)\.(.+)", r"context.blocks.\1.\2")
_DECODER_RULES: list[tuple[str, str]] = [
    (r"decoder\.blocks\.(\d+)\.0\.(weight|bias)", r"convs.\1.\2"),
    (r"decoder\.proj\.(weight|bias)", r"proj.\1"),
]


def map_fairseq_key(key: str) -> tuple[str, str] | None:
    """fairseq key -> ("encoder" | "decoder", our key), or None for a key we do not map."""
    if key.startswith(AUDIO_PREFIX):
        local = key[len(AUDIO_PREFIX) :]
        for pattern, repl in _ENCODER_RULES:
            if re.fullmatch(pattern, local):
                return "encoder", re.sub(pattern, repl, local)
        for pattern, drepl in _DECODER_RULES:
            if re.fullmatch(pattern, local):
                return "decoder", re.sub(pattern, drepl, local)
        return None
    pattern, srepl = _SHARED_RULE
    if re.fullmatch(pattern, key):
        return "encoder", re.sub(pattern, srepl, key)
    return None


def split_fairseq_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """fairseq state dict -> (encoder state, decoder state, unmapped keys)."""
    encoder: dict[str, Tensor] = {}
    decoder: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        mapped = map_fairseq_key(key)
        if mapped is None:
            unmapped.append(key)
        elif mapped[0] == "encoder":
            encoder[mapped[1]] = value
        else:
            decoder[mapped[1]] = value
    return encoder, decoder, unmapped


def parse_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `feature_encoder_spec`, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4",
    allowing only list/tuple literals of ints, `+` and `*` (never `eval`)."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported feature_encoder_spec {spec!r}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(
        isinstance(layer, tuple) and len(layer) == 3 for layer in layers
    ):
        raise ValueError(f"feature_encoder_spec {spec!r} is not a list of (dim, kernel, stride)")
    return layers


def encoder_config_from_fairseq(model_cfg: Mapping[str, Any]) -> EncoderConfig:
    """Build the EncoderConfig matching a fairseq `cfg["model"]` (data2vec_multi layout)."""
    audio = model_cfg["modalities"]["audio"]
    decoder = audio.get("decoder") or {}
    conv_layers = parse_conv_spec(audio["feature_encoder_spec"])
    return EncoderConfig(
        normalize_waveform=bool(model_cfg.get("normalize", True)),
        conv_layers=conv_layers,
        embed_dim=int(model_cfg["embed_dim"]),
        num_heads=int(model_cfg["num_heads"]),
        mlp_ratio=float(model_cfg["mlp_ratio"]),
        prenet_depth=int(audio["prenet_depth"]),
        depth=int(model_cfg["depth"]),
        num_utterance_tokens=int(audio.get("num_extra_tokens", 0)),
        pos_conv_width=int(audio["conv_pos_width"]),
        pos_conv_groups=int(audio["conv_pos_groups"]),
        pos_conv_depth=int(audio["conv_pos_depth"]),
        norm_eps=float(model_cfg["norm_eps"]),
        dropout=float(model_cfg["encoder_dropout"]),
        attention_dropout=float(model_cfg["attention_dropout"]),
        activation_dropout=float(model_cfg["activation_dropout"]),
        post_mlp_dropout=float(model_cfg["post_mlp_drop"]),
        layerdrop=float(model_cfg["layerdrop"]),
        prenet_layerdrop=float(audio.get("prenet_layerdrop", 0.0)),
        decoder_dim=int(decoder.get("decoder_dim", 384)),
        decoder_kernel=int(decoder.get("decoder_kernel", 7)),
        decoder_layers=int(decoder.get("decoder_layers", 4)),
        decoder_groups=int(decoder.get("decoder_groups", 16)),
        decoder_input_dropout=float(decoder.get("input_dropout", 0.1)),
        mask_noise_std=float(audio.get("mask_noise_std", 0.01)),
    )
