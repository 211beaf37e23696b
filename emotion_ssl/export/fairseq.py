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
| _ema (teacher, fp32) | (teacher) the ContextEncoder keys above without `context.` |
| proj.* (emotion2vec+ classifier) | (head, mean pooling) proj.weight, proj.bias |

data2vec 2.0 base has the same keys with `prenet_depth: 0, depth: 12`: no
`context_encoder.blocks` (its `context_encoder.norm` exists all the same: fairseq builds the
BlockEncoder's norm whatever its depth) and no `extra_tokens`. It reads as a 0 + 12 encoder;
`frozen.resplit_blocks` renumbers it into emotion2vec's 4 + 8 (docs/interop.md).
"""

from __future__ import annotations

import ast
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emotion_ssl.export.weights import PretrainedWeights
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


class FairseqCheckpointError(ValueError):
    """A fairseq checkpoint that cannot be read or does not match the architecture."""


FairseqCheckpoint = PretrainedWeights  # what read_fairseq_checkpoint returns


def _plain(obj: Any) -> Any:
    """omegaconf DictConfig / ListConfig (or any mapping) -> plain dicts and lists."""
    if isinstance(obj, Mapping) or (hasattr(obj, "items") and hasattr(obj, "keys")):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) or type(obj).__name__ == "ListConfig":
        return [_plain(v) for v in obj]
    return obj


def torch_load_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """torch.load with `weights_only=True` unless the caller trusts the file.

    Checkpoints saved by fairseq itself often pickle an omegaconf `DictConfig` or argparse
    objects; those need `trust_pickle=True` (loads with `weights_only=False`, which can run
    code from the file: only for files you trust) and omegaconf installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FairseqCheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise FairseqCheckpointError(
            f"{path}: the file stores Python objects beyond tensors and plain containers "
            f"({str(err).splitlines()[0]}). If you trust it, load it with trust_pickle=True "
            "(CLI: --trust-pickle), which uses torch.load(weights_only=False); omegaconf must "
            "be installed when the file pickles an omegaconf config."
        ) from err
    if not isinstance(ckpt, Mapping):
        raise FairseqCheckpointError(
            f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}"
        )
    return dict(ckpt)


def _check_supported(model_cfg: Mapping[str, Any], audio: Mapping[str, Any], path: str) -> None:
    """The architectures emotion-ssl implements; anything else is a clear error."""
    problems = []
    if model_cfg.get("layer_norm_first", False):
        problems.append("layer_norm_first=true (pre-LN blocks)")
    if not audio.get("use_alibi_encoder", True):
        problems.append("use_alibi_encoder=false")
    if audio.get("learned_alibi_scale_per_layer", False):
        problems.append("learned_alibi_scale_per_layer=true (one ALiBi scale per block)")
    if audio.get("learned_alibi", False):
        problems.append("learned_alibi=true (a learned bias table)")
    if audio.get("conv_pos_pre_ln", False):
        problems.append("conv_pos_pre_ln=true")
    if audio.get("extractor_mode", "layer_norm") != "layer_norm":
        problems.append(f"extractor_mode={audio.get('extractor_mode')!r}")
    decoder = audio.get("decoder") or {}
    if decoder and int(decoder.get("projection_layers", 1)) != 1:
        problems.append(f"decoder.projection_layers={decoder.get('projection_layers')}")
    if decoder and not decoder.get("decoder_residual", True):
        problems.append("decoder.decoder_residual=false")
    if problems:
        raise FairseqCheckpointError(
            f"{path}: unsupported architecture settings: {'; '.join(problems)}"
        )


def encoder_config_from_fairseq(
    model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any] | None = None
) -> EncoderConfig:
    """Build the EncoderConfig matching a fairseq `cfg["model"]` (data2vec_multi layout).

    Waveform normalisation comes from `cfg["task"]["normalize"]` when given, else from the
    model config's `normalize` (emotion2vec's FunASR config), else true.
    """
    audio = model_cfg["modalities"]["audio"]
    decoder = audio.get("decoder") or {}
    normalize = (task_cfg or {}).get("normalize", model_cfg.get("normalize", True))
    return EncoderConfig(
        normalize_waveform=bool(normalize),
        conv_layers=parse_conv_spec(audio["feature_encoder_spec"]),
        embed_dim=int(model_cfg["embed_dim"]),
        num_heads=int(model_cfg["num_heads"]),
        mlp_ratio=float(model_cfg["mlp_ratio"]),
        prenet_depth=int(audio["prenet_depth"]),
        depth=int(model_cfg["depth"]),
        num_utterance_tokens=int(audio.get("num_extra_tokens", 0)),
        pos_conv_width=int(audio["conv_pos_width"]),
        pos_conv_groups=int(audio["conv_pos_groups"]),
        pos_conv_depth=int(audio["conv_pos_depth"]),
        norm_eps=float(model_cfg.get("norm_eps", 1e-5)),
        dropout=float(model_cfg.get("encoder_dropout", 0.1)),
        attention_dropout=float(model_cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(model_cfg.get("activation_dropout", 0.0)),
        post_mlp_dropout=float(model_cfg.get("post_mlp_drop", 0.1)),
        layerdrop=float(model_cfg.get("layerdrop", 0.0)),
        prenet_layerdrop=float(audio.get("prenet_layerdrop", 0.0)),
        decoder_dim=int(decoder.get("decoder_dim", 384)),
        decoder_kernel=int(decoder.get("decoder_kernel", 7)),
        decoder_layers=int(decoder.get("decoder_layers", 4)),
        decoder_groups=int(decoder.get("decoder_groups", 16)),
        decoder_input_dropout=float(decoder.get("input_dropout", 0.1)),
        mask_noise_std=float(audio.get("mask_noise_std", 0.01)),
    )


def fairseq_model_config(config: EncoderConfig, **training: Any) -> dict[str, Any]:
    """A complete fairseq/FunASR `cfg["model"]` for `config` (every key FunASR reads).

    `training` overrides the pretraining settings written alongside (e.g. clone_batch).
    """
    spec = " + ".join(f"[{tuple(layer)}]" for layer in config.conv_layers)
    model = {
        "_name": "data2vec_multi",
        "loss_beta": 0.0,
        "loss_scale": None,
        "depth": config.depth,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_heads": config.num_heads,
        "norm_eps": config.norm_eps,
        "norm_affine": True,
        "encoder_dropout": config.dropout,
        "post_mlp_drop": config.post_mlp_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "dropout_input": 0.0,
        "layerdrop": config.layerdrop,
        "embed_dim": config.embed_dim,
        "mlp_ratio": config.mlp_ratio,
        "layer_norm_first": False,
        "average_top_k_layers": config.depth,
        "end_of_block_targets": False,
        "clone_batch": 8,
        "layer_norm_target_layer": False,
        "batch_norm_target_layer": False,
        "instance_norm_target_layer": True,
        "instance_norm_targets": False,
        "layer_norm_targets": False,
        "ema_decay": 0.999,
        "ema_same_dtype": True,
        "log_norms": True,
        "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 20000,
        "ema_encoder_only": False,
        "max_update": 100000,
        "extractor_mode": "layer_norm",
        "shared_decoder": None,
        "min_target_var": 0.1,
        "min_pred_var": 0.01,
        "supported_modality": "AUDIO",
        "mae_init": False,
        "seed": 1,
        "skip_ema": False,
        "cls_loss": 1.0,
        "recon_loss": 0.0,
        "d2v_loss": 1.0,
        "decoder_group": False,
        "adversarial_training": False,
        "adversarial_hidden_dim": 128,
        "adversarial_weight": 0.1,
        "cls_type": "chunk",
        "normalize": config.normalize_waveform,
        "modalities": {
            "audio": {
                "type": "AUDIO",
                "prenet_depth": config.prenet_depth,
                "prenet_layerdrop": config.prenet_layerdrop,
                "prenet_dropout": config.dropout,
                "start_drop_path_rate": 0.0,
                "end_drop_path_rate": 0.0,
                "num_extra_tokens": config.num_utterance_tokens,
                "init_extra_token_zero": True,
                "mask_noise_std": config.mask_noise_std,
                "mask_prob_min": None,
                "mask_prob": 0.5,
                "inverse_mask": False,
                "mask_prob_adjust": 0.05,
                "keep_masked_pct": 0.0,
                "mask_length": 5,
                "add_masks": False,
                "remove_masks": False,
                "mask_dropout": 0.0,
                "encoder_zero_mask": True,
                "mask_channel_prob": 0.0,
                "mask_channel_length": 64,
                "ema_local_encoder": False,
                "local_grad_mult": 1.0,
                "use_alibi_encoder": True,
                "alibi_scale": 1.0,
                "learned_alibi": False,
                "alibi_max_pos": None,
                "learned_alibi_scale": True,
                "learned_alibi_scale_per_head": True,
                "learned_alibi_scale_per_layer": False,
                "num_alibi_heads": config.num_heads,
                "model_depth": config.depth,
                "decoder": {
                    "decoder_dim": config.decoder_dim,
                    "decoder_groups": config.decoder_groups,
                    "decoder_kernel": config.decoder_kernel,
                    "decoder_layers": config.decoder_layers,
                    "input_dropout": config.decoder_input_dropout,
                    "add_positions_masked": False,
                    "add_positions_all": False,
                    "decoder_residual": True,
                    "projection_layers": 1,
                    "projection_ratio": 2.0,
                },
                "extractor_mode": "layer_norm",
                "feature_encoder_spec": spec,
                "conv_pos_width": config.pos_conv_width,
                "conv_pos_groups": config.pos_conv_groups,
                "conv_pos_depth": config.pos_conv_depth,
                "conv_pos_pre_ln": False,
            }
        },
    }
    model.update(training)
    return model


def _teacher_state(ema: Mapping[str, Tensor], path: str) -> tuple[dict[str, Tensor], list[str]]:
    """`_ema` -> ContextEncoder keys. Two layouts: the whole teacher model (fairseq keys), or
    with `ema_encoder_only` the shared blocks alone (keys "0.attn.qkv.weight", ...)."""
    state: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in ema.items():
        if re.match(r"\d+\.", key):  # ema_encoder_only: just the shared blocks
            state[f"blocks.{key}"] = value
            continue
        mapped = map_fairseq_key(key)
        if mapped is None or mapped[0] != "encoder" or not mapped[1].startswith("context."):
            unmapped.append(f"_ema.{key}")
        else:
            state[mapped[1].removeprefix("context.")] = value
    return state, unmapped


def _upgrade_alibi_scale(state: dict[str, Any]) -> dict[str, Any]:
    """A (1, H, 1, 1) ALiBi scale (older data2vec 2.0 files) -> (1, 1, H, 1, 1), the upgrade
    fairseq's `ModalitySpecificEncoder.upgrade_state_dict_named` applies on load."""
    key = AUDIO_PREFIX + "alibi_scale"
    value = state.get(key)
    if isinstance(value, Tensor) and value.dim() == 4:
        state[key] = value.unsqueeze(0)
    return state


def read_fairseq_checkpoint(
    path: str | Path,
    trust_pickle: bool = False,
    labels_file: str | Path | None = None,
    loaded: Mapping[str, Any] | None = None,
) -> PretrainedWeights:
    """Read a data2vec 2.0 / emotion2vec / emotion2vec+ fairseq checkpoint with torch only.

    Every tensor is mapped or reported: an unknown key is an error naming it. fp16 tensors are
    converted to fp32. `loaded` is the file's content when the caller already read it.
    An emotion2vec+ label list is read from `labels_file`, or from a
    `tokens.txt` beside the checkpoint (FunASR's layout), or from `cfg["model"]["labels"]`.
    """
    path = Path(path)
    ckpt = dict(loaded) if loaded is not None else torch_load_checkpoint(path, trust_pickle)
    if "model" not in ckpt or "cfg" not in ckpt:
        raise FairseqCheckpointError(
            f"{path}: not a fairseq checkpoint (needs 'model' and 'cfg'; has {sorted(ckpt)})"
        )
    cfg = _plain(ckpt["cfg"])
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or "modalities" not in model_cfg:
        raise FairseqCheckpointError(
            f"{path}: cfg['model'] is not a data2vec_multi config (no 'modalities')"
        )
    audio = model_cfg["modalities"].get("audio")
    if not isinstance(audio, dict):
        raise FairseqCheckpointError(f"{path}: cfg['model']['modalities'] has no 'audio' entry")
    _check_supported(model_cfg, audio, str(path))
    config = encoder_config_from_fairseq(model_cfg, cfg.get("task"))

    state = _upgrade_alibi_scale(dict(ckpt["model"]))
    ema = state.pop("_ema", None)
    if isinstance(ema, Mapping):
        ema = _upgrade_alibi_scale(dict(ema))
    source_dtype = "float32"
    floats: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise FairseqCheckpointError(f"{path}: model[{key!r}] is not a tensor")
        if value.is_floating_point():
            if value.dtype != torch.float32:
                source_dtype = str(value.dtype).removeprefix("torch.")
            value = value.float()  # fp16 / bf16 checkpoints load as fp32
        floats[key] = value

    head_state, head_config = None, None
    if "proj.weight" in floats:  # emotion2vec+: a linear layer over the mean of the frames
        head_state = {
            "proj.weight": floats.pop("proj.weight"),
            "proj.bias": floats.pop("proj.bias"),
        }
        head_config = {
            "dim": config.embed_dim,
            "num_classes": head_state["proj.weight"].size(0),
            "pooling": "mean",
            "dropout": 0.0,
            "attention_dim": 128,
        }
    encoder, decoder, unmapped = split_fairseq_state_dict(floats)
    if unmapped:
        raise FairseqCheckpointError(
            f"{path}: unexpected keys (not part of a data2vec 2.0 / emotion2vec audio model): "
            f"{sorted(unmapped)}"
        )
    teacher = None
    if ema is not None:
        teacher, unmapped_ema = _teacher_state(ema, str(path))
        if unmapped_ema:
            raise FairseqCheckpointError(f"{path}: unexpected teacher keys {sorted(unmapped_ema)}")
        teacher = {k: v.float() for k, v in teacher.items()}

    labels = _read_labels(path, labels_file, model_cfg)
    if (
        head_state is not None
        and labels is not None
        and len(labels) != head_state["proj.weight"].size(0)
    ):
        raise FairseqCheckpointError(
            f"{path}: {len(labels)} labels for a classifier with "
            f"{head_state['proj.weight'].size(0)} outputs"
        )
    return PretrainedWeights(
        path=str(path),
        config=config,
        encoder_state=encoder,
        decoder_state=decoder or None,
        teacher_state=teacher,
        head_state=head_state,
        head_config=head_config,
        labels=labels,
        source_format="fairseq",
        source_dtype=source_dtype,
    )


def _read_labels(
    path: Path, labels_file: str | Path | None, model_cfg: Mapping[str, Any]
) -> list[str] | None:
    candidates = [Path(labels_file)] if labels_file is not None else [path.parent / "tokens.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
        if labels_file is not None:
            raise FairseqCheckpointError(f"{candidate}: labels file not found")
    labels = model_cfg.get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) else None


def fairseq_state_dict(
    encoder_state: Mapping[str, Tensor],
    decoder_state: Mapping[str, Tensor] | None = None,
    teacher_state: Mapping[str, Tensor] | None = None,
    head_state: Mapping[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Our state dicts -> one fairseq `model` state dict (the inverse of the mapping)."""
    inverse = _inverse_map(list(encoder_state), "encoder")
    state: dict[str, Any] = {}
    for key, value in encoder_state.items():
        if key == "context.utterance_tokens" and value.numel() == 0:
            continue  # data2vec 2.0 style: no extra_tokens key
        state[inverse[key]] = value
    if decoder_state:
        inverse_dec = _inverse_map(list(decoder_state), "decoder")
        for key, value in decoder_state.items():
            state[inverse_dec[key]] = value
    if head_state:
        if set(head_state) != {"proj.weight", "proj.bias"}:
            raise FairseqCheckpointError(
                "only a mean-pooled linear head has a fairseq equivalent (emotion2vec+ `proj`); "
                f"this head has {sorted(head_state)}"
            )
        state["proj.weight"] = head_state["proj.weight"]
        state["proj.bias"] = head_state["proj.bias"]
    if teacher_state:
        inverse_t = _inverse_map([f"context.{k}" for k in teacher_state], "encoder")
        state["_ema"] = {
            inverse_t[f"context.{k}"]: v.float()
            for k, v in teacher_state.items()
            if not (k == "utterance_tokens" and v.numel() == 0)
        }
    return state


def _inverse_map(keys: list[str], side: str) -> dict[str, str]:
    """our key -> fairseq key, by trying the forward rules on every fairseq key shape."""
    out: dict[str, str] = {}
    for key in keys:
        candidates = _fairseq_candidates(key, side)
        found = [c for c in candidates if map_fairseq_key(c) == (side, key)]
        if not found:
            raise FairseqCheckpointError(f"no fairseq key for {side} key {key!r}")
        out[key] = found[0]
    return out


def _fairseq_candidates(key: str, side: str) -> list[str]:
    A = AUDIO_PREFIX
    if side == "decoder":
        m = re.fullmatch(r"convs\.(\d+)\.(weight|bias)", key)
        if m:
            return [f"{A}decoder.blocks.{m[1]}.0.{m[2]}"]
        return [f"{A}decoder.{key}"]
    rules = [
        (
            r"feature_extractor\.layers\.(\d+)\.conv\.weight",
            A + r"local_encoder.conv_layers.\1.0.weight",
        ),
        (
            r"feature_extractor\.layers\.(\d+)\.norm\.(weight|bias)",
            A + r"local_encoder.conv_layers.\1.2.1.\2",
        ),
        (r"feature_norm\.(weight|bias)", A + r"project_features.1.\1"),
        (r"feature_proj\.(weight|bias)", A + r"project_features.2.\1"),
        (r"context\.utterance_tokens", A + "extra_tokens"),
        (r"context\.alibi_scale", A + "alibi_scale"),
        (r"context\.prenet_norm\.(weight|bias)", A + r"context_encoder.norm.\1"),
        (r"context\.prenet\.(\d+)\.(.+)", A + r"context_encoder.blocks.\1.\2"),
        (r"context\.blocks\.(\d+)\.(.+)", r"blocks.\1.\2"),
    ]
    m = re.fullmatch(r"context\.pos_conv\.layers\.(\d+)\.(weight|bias)", key)
    if m:
        return [f"{A}relative_positional_encoder.{int(m[1]) + 1}.0.{m[2]}"]
    return [re.sub(p, r, key) for p, r in rules if re.fullmatch(p, key)]


def save_fairseq_checkpoint(
    path: str | Path,
    config: EncoderConfig,
    encoder_state: Mapping[str, Tensor],
    decoder_state: Mapping[str, Tensor] | None = None,
    teacher_state: Mapping[str, Tensor] | None = None,
    head_state: Mapping[str, Tensor] | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write our weights as a fairseq/FunASR checkpoint (`{"model", "cfg"}`), loadable with
    `weights_only=True`; labels (emotion2vec+) also go to `tokens.txt` beside it."""
    from emotion_ssl.train.checkpoint import atomic_torch_save

    path = Path(path)
    model_cfg = fairseq_model_config(config)
    if labels is not None:
        model_cfg["labels"] = list(labels)
    ckpt = {
        "model": fairseq_state_dict(encoder_state, decoder_state, teacher_state, head_state),
        "cfg": {
            "model": model_cfg,
            "task": {
                "_name": "audio_pretraining",
                "normalize": config.normalize_waveform,
                "sample_rate": 16000,
            },
        },
    }
    atomic_torch_save(ckpt, path)
    if labels is not None:
        (path.parent / "tokens.txt").write_text("".join(f"{label}\n" for label in labels))
    return path
