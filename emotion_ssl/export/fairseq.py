"""Key and config mapping between fairseq data2vec 2.0 / emotion2vec checkpoints and ours.

fairseq layout (SPEC section 8): `ckpt["model"]` is the state dict, `ckpt["cfg"]["model"]`
the model config. `KEY_TABLE` below is the key mapping, both ways (fairseq -> ours on import,
ours -> fairseq on export); the teacher (`_ema`, fp32) holds the ContextEncoder rows without
`context.`, and an emotion2vec+ classifier's `proj.*` is a mean-pooled head.

data2vec 2.0 base has the same keys with `prenet_depth: 0, depth: 12`: no
`context_encoder.blocks` (its `context_encoder.norm` exists all the same: fairseq builds the
BlockEncoder's norm whatever its depth) and no `extra_tokens`. It reads as a 0 + 12 encoder;
`frozen.resplit_blocks` renumbers it into emotion2vec's 4 + 8 (docs/interop.md).
"""

from __future__ import annotations

import ast
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.losses import CollapseGuard, ObjectiveSettings
from emotion_ssl.models.config import SAMPLE_RATE, EncoderConfig
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.models.teacher import TeacherSettings
from emotion_ssl.utils.outputs import atomic_torch_save

AUDIO_PREFIX = "modality_encoders.AUDIO."

Part = Literal["encoder", "decoder"]

KEY_TABLE: list[tuple[str, str, Part]] = [
    # (fairseq key, emotion-ssl key, part): A = the audio prefix; {i} a layer number, {p}
    # weight or bias, {rest} the rest of a block's key. Our decoder keys are ConvDecoder's.
    ("A.local_encoder.conv_layers.{i}.0.weight", "feature_extractor.layers.{i}.conv.weight", "encoder"),
    ("A.local_encoder.conv_layers.{i}.2.1.{p}", "feature_extractor.layers.{i}.norm.{p}", "encoder"),
    ("A.project_features.1.{p}", "feature_norm.{p}", "encoder"),
    ("A.project_features.2.{p}", "feature_proj.{p}", "encoder"),
    # fairseq's Sequential starts with a transpose, so its conv layers count from 1
    ("A.relative_positional_encoder.{i+1}.0.{p}", "context.pos_conv.layers.{i}.{p}", "encoder"),
    ("A.extra_tokens", "context.utterance_tokens", "encoder"),
    ("A.alibi_scale", "context.alibi_scale", "encoder"),
    ("A.context_encoder.norm.{p}", "context.prenet_norm.{p}", "encoder"),
    ("A.context_encoder.blocks.{i}.{rest}", "context.prenet.{i}.{rest}", "encoder"),
    ("blocks.{i}.{rest}", "context.blocks.{i}.{rest}", "encoder"),
    ("A.decoder.blocks.{i}.0.{p}", "convs.{i}.{p}", "decoder"),
    ("A.decoder.proj.{p}", "proj.{p}", "decoder"),
]  # fmt: skip

_FIELDS = {"{i}": r"(?P<i>\d+)", "{i+1}": r"(?P<j>\d+)", "{p}": r"(?P<p>weight|bias)", "{rest}": r"(?P<rest>.+)"}  # fmt: skip


def _expand(template: str) -> str:
    return AUDIO_PREFIX + template[2:] if template.startswith("A.") else template


def _pattern(template: str) -> re.Pattern[str]:
    """A KEY_TABLE template as a regular expression with its fields as named groups."""
    regex = re.escape(_expand(template))
    for name, group in _FIELDS.items():
        regex = regex.replace(re.escape(name), group)
    return re.compile(regex)


def _fill(template: str, i: int | None, fields: dict[str, str]) -> str:
    out = _expand(template)
    if i is not None:
        out = out.replace("{i+1}", str(i + 1)).replace("{i}", str(i))
    for name in ("p", "rest"):
        if name in fields:
            out = out.replace("{" + name + "}", fields[name])
    return out


_TABLE = [(_pattern(fs), _pattern(ours), fs, ours, part) for fs, ours, part in KEY_TABLE]


def _translate(key: str, to_fairseq: bool, part: Part | None = None) -> tuple[Part, str] | None:
    """One key through KEY_TABLE, either way; None when no row matches."""
    for fs_re, ours_re, fs, ours, row_part in _TABLE:
        if part is not None and row_part != part:
            continue
        match = (ours_re if to_fairseq else fs_re).fullmatch(key)
        if match is None:
            continue
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        i = int(groups["i"]) if "i" in groups else int(groups["j"]) - 1 if "j" in groups else None
        return row_part, _fill(fs if to_fairseq else ours, i, groups)
    return None


def map_fairseq_key(key: str) -> tuple[Part, str] | None:
    """fairseq key -> ("encoder" | "decoder", our key), or None for a key we do not map."""
    return _translate(key, to_fairseq=False)


def fairseq_key(key: str, part: Part) -> str:
    """Our `part` key -> its fairseq key (KEY_TABLE read the other way)."""
    found = _translate(key, to_fairseq=True, part=part)
    if found is None:
        raise FairseqCheckpointError(f"no fairseq key for {part} key {key!r}")
    return found[1]


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

    The pretraining settings written alongside are this project's defaults (the settings
    dataclasses'); `training` overrides them (e.g. clone_batch).
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
        "clone_batch": MaskingSettings.num_clones,
        "layer_norm_target_layer": False,
        "batch_norm_target_layer": False,
        "instance_norm_target_layer": True,
        "instance_norm_targets": False,
        "layer_norm_targets": False,
        "ema_decay": TeacherSettings.decay_start,
        "ema_same_dtype": True,
        "log_norms": True,
        "ema_end_decay": TeacherSettings.decay_end,
        "ema_anneal_end_step": TeacherSettings.anneal_steps,
        "ema_encoder_only": False,
        "max_update": 100000,
        "extractor_mode": "layer_norm",
        "shared_decoder": None,
        "min_target_var": CollapseGuard.min_target_std,
        "min_pred_var": CollapseGuard.min_prediction_std,
        "supported_modality": "AUDIO",
        "mae_init": False,
        "seed": 1,
        "skip_ema": False,
        "cls_loss": ObjectiveSettings.utterance_weight,
        "recon_loss": 0.0,
        "d2v_loss": 1.0,
        "decoder_group": False,
        "adversarial_training": False,
        "adversarial_hidden_dim": 128,
        "adversarial_weight": 0.1,
        "cls_type": ObjectiveSettings.utterance_variant,
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
                "mask_prob": MaskingSettings.mask_prob,
                "inverse_mask": False,
                "mask_prob_adjust": MaskingSettings.mask_prob_adjust,
                "keep_masked_pct": 0.0,
                "mask_length": MaskingSettings.mask_length,
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
    state: dict[str, Any] = {}
    for key, value in encoder_state.items():
        if key == "context.utterance_tokens" and value.numel() == 0:
            continue  # data2vec 2.0 style: no extra_tokens key
        state[fairseq_key(key, "encoder")] = value
    for key, value in (decoder_state or {}).items():
        state[fairseq_key(key, "decoder")] = value
    if head_state:
        if set(head_state) != {"proj.weight", "proj.bias"}:
            raise FairseqCheckpointError(
                "only a mean-pooled linear head has a fairseq equivalent (emotion2vec+ `proj`); "
                f"this head has {sorted(head_state)}"
            )
        state["proj.weight"] = head_state["proj.weight"]
        state["proj.bias"] = head_state["proj.bias"]
    if teacher_state:
        state["_ema"] = {
            fairseq_key(f"context.{k}", "encoder"): v.float()
            for k, v in teacher_state.items()
            if not (k == "utterance_tokens" and v.numel() == 0)
        }
    return state


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
                "sample_rate": SAMPLE_RATE,
            },
        },
    }
    atomic_torch_save(ckpt, path)
    if labels is not None:
        (path.parent / "tokens.txt").write_text("".join(f"{label}\n" for label in labels))
    return path
