"""The frozen-encoder format, and `load_encoder` for every saved form we read.

A frozen encoder is a self-describing folder:

    model.safetensors    the encoder's weights (student by default)
    config.json          {"format": "emotion-ssl-encoder", "encoder": EncoderConfig fields,
                          "sample_rate", "frame_rate", "feature_dim", "normalization", ...}
    README.md            a model card
    teacher.safetensors  optional: the EMA teacher's ContextEncoder (to continue pretraining)
    decoder.safetensors  optional: the pretraining decoder (to continue pretraining)
    head.safetensors     optional: a ClassificationHead (config.json "head" and "labels")

`config.json` alone rebuilds the architecture (`EncoderConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from emotion_ssl.export.sniff import check_checkpoint_file
from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.models.config import SAMPLE_RATE, EncoderConfig
from emotion_ssl.models.encoder import EmotionEncoder
from emotion_ssl.utils.outputs import atomic_write

FORMAT = "emotion-ssl-encoder"
FORMAT_VERSION = 1


class StateDictMismatchError(ValueError):
    """Weights that do not fill a module exactly; the message lists every problem."""


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Raise naming every missing, unexpected or mis-shaped key (zero-size parameters, e.g.
    the utterance tokens of a 0-token model, may be absent)."""
    expected = module.state_dict()
    missing = sorted(k for k, v in expected.items() if k not in state and v.numel() > 0)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches {shapes}")
    if problems:
        raise StateDictMismatchError(f"{what}: " + "; ".join(problems))


def load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Every tensor used, every parameter filled, or an error listing what is not."""
    check_state_dict(module, state, what)
    full = dict(state)
    for key, value in module.state_dict().items():
        full.setdefault(key, value)  # only zero-size entries can be absent here
    module.load_state_dict(full, strict=True)


# ---------------------------------------------------------------------------- writing
def save_encoder_dir(
    out_dir: str | Path,
    weights: PretrainedWeights,
    *,
    model_card: str | None = None,
    include_pretraining_state: bool = True,
) -> Path:
    """Write `weights` as a frozen-encoder folder (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"model": "model.safetensors"}
    _save_tensors(out / "model.safetensors", weights.encoder_state)
    if include_pretraining_state and weights.teacher_state is not None:
        _save_tensors(out / "teacher.safetensors", weights.teacher_state)
        files["teacher"] = "teacher.safetensors"
    if include_pretraining_state and weights.decoder_state is not None:
        _save_tensors(out / "decoder.safetensors", weights.decoder_state)
        files["decoder"] = "decoder.safetensors"
    if weights.head_state is not None:
        _save_tensors(out / "head.safetensors", weights.head_state)
        files["head"] = "head.safetensors"
    config = weights.config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": config.to_dict(),
        "sample_rate": SAMPLE_RATE,
        "frame_rate": SAMPLE_RATE / config.hop_length,
        "feature_dim": config.embed_dim,
        "num_utterance_tokens": config.num_utterance_tokens,
        "normalization": "inside the encoder: each utterance to zero mean, unit variance over its "
        "valid samples"
        if config.normalize_waveform
        else "none: the encoder reads raw samples",
        "labels": weights.labels,
        "head": weights.head_config,
        "files": files,
        "source": {"path": weights.path, "format": weights.source_format},
        "metadata": weights.metadata,
    }
    _write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    _write_text(
        out / "README.md", model_card or default_model_card(weights, include_pretraining_state)
    )
    return out


def default_model_card(weights: PretrainedWeights, include_pretraining_state: bool = True) -> str:
    s = weights.summary()
    c = weights.config
    lines = [
        "# emotion-ssl encoder",
        "",
        f"- source: `{s['source']}` ({s['format']}, {s['dtype']})",
        f"- architecture: {s['blocks']}, {s['utterance_tokens']} utterance tokens, "
        f"{s['encoder_parameters']:,} parameters",
        f"- input: raw 16 kHz mono audio; output: {c.embed_dim}-d frames at "
        f"{SAMPLE_RATE / c.hop_length:g} Hz, utterance vector, utterance tokens",
        "- pretraining state included: "
        + (
            f"teacher={s['teacher']}, decoder={s['decoder']}"
            if include_pretraining_state
            else "no (a frozen encoder)"
        ),
    ]
    if weights.labels:
        lines.append(f"- classifier labels: {', '.join(weights.labels)}")
    for key, value in weights.metadata.items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "```python",
        "from emotion_ssl.export import load_encoder",
        "encoder = load_encoder('THIS_FOLDER')  # eval mode, no gradients",
        "out = encoder(waveforms, lengths)      # out.frames, out.utterance, out.tokens",
        "```",
        "",
    ]
    return "\n".join(lines)


def _save_tensors(path: Path, state: Mapping[str, Tensor]) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))


def _load_tensors(path: Path) -> dict[str, Tensor]:
    """safetensors' load_file, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(2, "missing from the encoder folder (export it again)", str(path))
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors reports a damaged file without its name
        raise ValueError(
            f"{path}: not a readable safetensors file ({err}); export the encoder again"
        ) from err


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------- reading
def read_encoder_dir(path: str | Path) -> PretrainedWeights:
    """A frozen-encoder folder -> PretrainedWeights."""
    root = Path(path)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{root}: no config.json (not an emotion-ssl encoder folder)")
    try:
        meta = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err}); export again") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {meta['format_version']} is newer than this "
            f"emotion-ssl reads ({FORMAT_VERSION}); upgrade emotion-ssl"
        )
    files = meta.get("files", {"model": "model.safetensors"})

    def optional(name: str) -> dict[str, Tensor] | None:
        return _load_tensors(root / files[name]) if name in files else None

    return PretrainedWeights(
        path=str(root),
        config=EncoderConfig.from_dict(meta["encoder"]),
        encoder_state=_load_tensors(root / files["model"]),
        decoder_state=optional("decoder"),
        teacher_state=optional("teacher"),
        head_state=optional("head"),
        head_config=meta.get("head"),
        labels=meta.get("labels"),
        source_format="emotion-ssl",
        metadata=dict(meta.get("metadata", {})),
    )


def read_lightning_checkpoint(
    path: str | Path, loaded: Mapping[str, Any] | None = None
) -> PretrainedWeights:
    """An `emotion-ssl pretrain` or `finetune` checkpoint (.ckpt) -> PretrainedWeights
    (student, teacher, decoder; or encoder, head and labels; no optimizer state). The
    architecture is the `encoder_config` the training system saved in the checkpoint."""
    ckpt = loaded if loaded is not None else torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters", {})
    state: dict[str, Tensor] = ckpt["state_dict"]
    config = checkpoint_encoder_config(ckpt, path)

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    if "head_config" in hparams:  # a FinetuneSystem checkpoint: encoder + head + labels
        freeze = hparams.get("freeze")  # settings (`freeze.mode`); a string before them
        return PretrainedWeights(
            path=str(path),
            config=config,
            encoder_state=part("encoder."),
            head_state=part("head."),
            head_config=dict(hparams["head_config"]),
            labels=list(hparams["label_names"]),
            source_format="lightning (fine-tuned)",
            metadata={
                "global_step": ckpt.get("global_step"),
                "fine-tuned from": hparams.get("encoder"),
                "freeze": freeze.get("mode") if isinstance(freeze, Mapping) else freeze,
            },
        )
    encoder = hparams.get("encoder")
    preset = encoder.get("preset") if isinstance(encoder, Mapping) else hparams.get("preset")
    return PretrainedWeights(
        path=str(path),
        config=config,
        encoder_state=part("student."),
        decoder_state=part("decoder.") or None,
        teacher_state=part("teacher.encoder.") or None,
        source_format="lightning",
        metadata={"updates": ckpt.get("global_step"), "preset": preset, **_run_config(Path(path))},
    )


def checkpoint_encoder_config(ckpt: Mapping[str, Any], path: str | Path) -> EncoderConfig:
    """The encoder architecture of a training checkpoint: the resolved config the system saved
    (`encoder_config`); for checkpoints written before it did, rebuilt from the
    hyper-parameters (a fine-tuning run's `encoder_config`, a pretraining run's flat `preset`
    and `encoder_overrides`)."""
    hparams = ckpt.get("hyper_parameters", {})
    saved = ckpt.get("encoder_config", hparams.get("encoder_config"))
    try:
        if saved is not None:
            return EncoderConfig.from_dict(dict(saved))
        return EncoderConfig.from_preset(
            hparams.get("preset", "base"), **(hparams.get("encoder_overrides") or {})
        )
    except ValueError as err:
        raise ValueError(f"{path}: its encoder config cannot be read ({err})") from err


def _run_config(path: Path) -> dict[str, Any]:
    """What the run's `config.yaml` (written by `emotion-ssl pretrain` beside its checkpoints
    folder) says about training data and recipe, for the model card."""
    import yaml

    config_path = path.parent.parent / "config.yaml"
    if not config_path.is_file():
        return {}
    config = yaml.safe_load(config_path.read_text()) or {}
    data, model, trainer = (
        config.get("data", {}),
        config.get("model", {}),
        config.get("trainer", {}),
    )
    # settings groups (`model.optim.lr`); runs before them wrote flat names (`model.lr`)
    optim, objective = model.get("optim") or model, model.get("objective") or model
    found = {
        "training data": data.get("train_manifest"),
        "labelled data": data.get("labelled_manifest"),
        "max updates": trainer.get("max_steps"),
        "learning rate": optim.get("lr"),
        "utterance loss": f"{objective.get('utterance_variant')} / "
        f"{objective.get('utterance_mode')}",
        "category weight": objective.get("category_weight"),
        "run config": str(config_path),
    }
    return {k: v for k, v in found.items() if v is not None}


def read_weights(path: str | Path, trust_pickle: bool = False) -> PretrainedWeights:
    """Any saved encoder: our folder, a fairseq checkpoint, or a Lightning checkpoint."""
    p = Path(path)
    if p.is_dir():
        return read_encoder_dir(p)
    if not p.is_file():
        raise FileNotFoundError(2, "no such file or folder", str(p))
    check_checkpoint_file(p)  # "not a checkpoint" is not "needs --trust-pickle"
    from emotion_ssl.export.fairseq import read_fairseq_checkpoint, torch_load_checkpoint

    content = torch_load_checkpoint(p, trust_pickle)  # read once, whatever the kind
    if "state_dict" in content and "hyper_parameters" in content:
        return read_lightning_checkpoint(p, content)
    return read_fairseq_checkpoint(p, trust_pickle, loaded=content)


def build_encoder(
    weights: PretrainedWeights, which: Literal["student", "teacher"] = "student"
) -> EmotionEncoder:
    """An EmotionEncoder filled strictly from `weights` (the teacher: the student's CNN and
    projection with the teacher's context encoder)."""
    encoder = EmotionEncoder(weights.config)
    load_strict(encoder, weights.encoder_state, f"{weights.path} (encoder)")
    if which == "teacher":
        teacher = teacher_context_state(weights)
        if teacher is None:
            raise ValueError(f"{weights.path}: holds no teacher weights")
        load_strict(encoder.context, teacher, f"{weights.path} (teacher)")
    return encoder


def teacher_context_state(weights: PretrainedWeights) -> dict[str, Tensor] | None:
    """The teacher's full ContextEncoder state: `_ema` over the student's context (an
    `ema_encoder_only` file holds only the shared blocks)."""
    if weights.teacher_state is None:
        return None
    prefix = "context."
    state = {k[len(prefix) :]: v for k, v in weights.encoder_state.items() if k.startswith(prefix)}
    state.update(weights.teacher_state)
    return state


def resplit_blocks(weights: PretrainedWeights, prenet_depth: int) -> PretrainedWeights:
    """The same weights with the transformer stack split at another prenet/shared boundary.

    The prenet's input LayerNorm and the blocks run as one chain, prenet blocks first, so
    renumbering the blocks along that chain computes exactly the same function. The case it
    exists for: data2vec 2.0 base (`prenet_depth: 0, depth: 12`; fairseq `blocks.0..11` and
    `context_encoder.norm`) into emotion2vec's layout (4 prenet + 8 shared):

        source chain position n    ->  prenet.{n}             for n < prenet_depth
                                   ->  blocks.{n - prenet_depth} otherwise

    i.e. data2vec 2.0 `blocks.0..3` -> prenet 0..3, `blocks.4..11` -> shared 0..7; the
    input norm stays the prenet norm. Student and teacher (`_ema`) are renumbered alike.
    What changes is which blocks count as "shared": the teacher's targets come from the
    shared ones (data2vec 2.0's top 8 of 12 = emotion2vec's 8 shared).
    """
    config = weights.config
    total = config.num_layers
    if not 0 <= prenet_depth < total:
        raise ValueError(
            f"{weights.path}: cannot split {total} blocks into {prenet_depth} prenet blocks "
            "and at least one shared block"
        )
    old_prenet = config.prenet_depth

    def renumber(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            match = re.fullmatch(re.escape(prefix) + r"(prenet|blocks)\.(\d+)\.(.+)", key)
            if match is None:
                out[key] = value
                continue
            n = int(match[2]) + (old_prenet if match[1] == "blocks" else 0)  # chain position
            where = f"prenet.{n}" if n < prenet_depth else f"blocks.{n - prenet_depth}"
            out[f"{prefix}{where}.{match[3]}"] = value
        return out

    return dataclasses.replace(
        weights,
        config=dataclasses.replace(config, prenet_depth=prenet_depth, depth=total - prenet_depth),
        encoder_state=renumber(weights.encoder_state, "context."),
        teacher_state=None
        if weights.teacher_state is None
        else renumber(weights.teacher_state, ""),
    )


def validate_weights(weights: PretrainedWeights) -> None:
    """Build every part strictly (encoder, decoder, teacher, classifier) or raise naming
    exactly what is missing, unexpected or mis-shaped."""
    from emotion_ssl.models.decoder import ConvDecoder
    from emotion_ssl.models.encoder import ContextEncoder

    config = weights.config
    # modules on the meta device: keys and shapes without allocating (base: 93 M parameters)
    with torch.device("meta"):
        encoder, decoder, context = (
            EmotionEncoder(config),
            ConvDecoder(config),
            ContextEncoder(config),
        )
    check_state_dict(encoder, weights.encoder_state, f"{weights.path} (encoder)")
    if weights.decoder_state is not None:
        check_state_dict(decoder, weights.decoder_state, f"{weights.path} (decoder)")
    teacher = teacher_context_state(weights)
    if teacher is not None:
        check_state_dict(context, teacher, f"{weights.path} (teacher)")
    if weights.head_state is not None:
        from emotion_ssl.models.heads import ClassificationHead

        if weights.head_config is None:
            raise StateDictMismatchError(f"{weights.path}: head weights without a head config")
        with torch.device("meta"):
            head = ClassificationHead.from_config(weights.head_config)
        check_state_dict(head, weights.head_state, f"{weights.path} (head)")
        if weights.labels is not None and len(weights.labels) != head.config["num_classes"]:
            raise StateDictMismatchError(
                f"{weights.path}: {len(weights.labels)} labels for a head with "
                f"{head.config['num_classes']} classes"
            )


def load_encoder(
    path: str | Path, which: Literal["student", "teacher"] = "student", trust_pickle: bool = False
) -> EmotionEncoder:
    """Load a frozen encoder: eval mode, gradients off. `path` is an emotion-ssl encoder
    folder, a fairseq data2vec 2.0 / emotion2vec checkpoint, or an `emotion-ssl pretrain`
    checkpoint."""
    encoder = build_encoder(read_weights(path, trust_pickle), which)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def load_classifier(
    path: str | Path, trust_pickle: bool = False
) -> tuple[EmotionEncoder, nn.Module, list[str] | None]:
    """Load an encoder with its emotion head (a fine-tuned export or emotion2vec+):
    (encoder, head, labels), both in eval mode with gradients off.

    >>> encoder, head, labels = load_classifier("encoders/finetuned")  # doctest: +SKIP
    >>> out = encoder(waveforms, lengths)                               # doctest: +SKIP
    >>> probs = head(out.frames, out.padding_mask).softmax(-1)          # doctest: +SKIP
    """
    from emotion_ssl.models.heads import ClassificationHead

    weights = read_weights(path, trust_pickle)
    if weights.head_state is None or weights.head_config is None:
        raise ValueError(f"{path}: holds no classification head")
    validate_weights(weights)
    encoder = build_encoder(weights)
    head = ClassificationHead.from_config(weights.head_config)
    load_strict(head, weights.head_state, f"{path} (head)")
    for module in (encoder, head):
        module.eval()
        module.requires_grad_(False)
    return encoder, head, weights.labels


def describe(weights: PretrainedWeights) -> str:
    """The summary table `import-fairseq` prints."""
    rows = weights.summary()
    width = max(len(k) for k in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows.items())


__all__ = [
    "StateDictMismatchError",
    "build_encoder",
    "check_state_dict",
    "describe",
    "load_classifier",
    "load_encoder",
    "load_strict",
    "read_encoder_dir",
    "read_lightning_checkpoint",
    "read_weights",
    "resplit_blocks",
    "save_encoder_dir",
    "teacher_context_state",
    "validate_weights",
]
