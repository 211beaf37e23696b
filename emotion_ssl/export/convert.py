"""Encoder folders in and out: what `emotion-ssl export`, `import-fairseq` and `export-fairseq`
do, as functions the demo, the benchmarks and users' scripts call too.

    from emotion_ssl.export.convert import export_encoder
    done = export_encoder("runs/pretrain/version_0/checkpoints/last.ckpt", "encoders/mine")
    print(done.summary)           # architecture, parameters, what the folder holds
    # then: emotion_ssl.load_encoder("encoders/mine")

Every function refuses to write over files it did not write (`claim_encoder_dir`), reads
checkpoints with torch only (`trust_pickle` for the rest) and validates the weights before
writing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.utils.outputs import OutputDir, claim_output_dir, path_identity

ENCODER_DIR_FILES = (
    "model.safetensors",
    "config.json",
    "README.md",
    "teacher.safetensors",
    "decoder.safetensors",
    "head.safetensors",
    "encoder.onnx",
)
"""What an encoder folder may hold (besides its record)."""


@dataclass
class Converted:
    """What an export or import wrote."""

    path: Path
    """The encoder folder or fairseq checkpoint written."""
    weights: PretrainedWeights
    """The weights as written (after the student/teacher choice)."""
    notes: list[str] = field(default_factory=list)
    """Lines for a person: what was written, replaced or left out."""

    @property
    def summary(self) -> str:
        from emotion_ssl.export.frozen import describe

        return "\n".join([describe(self.weights), *self.notes])


def claim_encoder_dir(
    out_dir: str | Path, command: str, identity: dict[str, Any], overwrite: bool
) -> OutputDir:
    """An encoder folder is written only where it loses nobody's files (see
    emotion_ssl/utils/outputs.py); one from an emotion-ssl without records counts as ours."""

    def older_export(folder: Path) -> bool:
        try:
            meta = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("format") == "emotion-ssl-encoder"

    return claim_output_dir(
        out_dir, command, identity, ENCODER_DIR_FILES, overwrite=overwrite, legacy=older_export
    )


def swap_in_teacher(weights: PretrainedWeights, source: str | Path) -> PretrainedWeights:
    """The same weights with the EMA teacher's context blocks in place of the student's (the
    CNN and projection are shared: the teacher tracks only the context encoder).
    Raises: ValueError when `source` holds no teacher."""
    from emotion_ssl.export.frozen import teacher_context_state

    teacher = teacher_context_state(weights)
    if teacher is None:
        raise ValueError(f"{source} holds no teacher weights: export the student")
    encoder_state = {k: v for k, v in weights.encoder_state.items() if not k.startswith("context.")}
    encoder_state.update({f"context.{k}": v for k, v in teacher.items()})
    return replace(weights, encoder_state=encoder_state)


def model_card_with_results(weights: PretrainedWeights, results: str | Path) -> str:
    """The default model card plus the tables of an `evaluate` results.json."""
    from emotion_ssl.export.frozen import default_model_card
    from emotion_ssl.utils.results import results_markdown

    table = results_markdown(json.loads(Path(results).read_text()))
    table = "\n".join(line for line in table.splitlines() if not line.startswith("!["))
    return default_model_card(weights, False) + "\n## Evaluation\n\n" + table.split("\n", 2)[2]


def export_encoder(
    checkpoint: str | Path,
    out_dir: str | Path,
    which: Literal["student", "teacher"] = "student",
    results: str | Path | None = None,
    format: Literal["folder", "onnx"] = "folder",
    overwrite: bool = False,
) -> Converted:
    """A `pretrain` checkpoint (.ckpt), fairseq checkpoint or encoder folder -> a frozen encoder
    folder (model.safetensors, config.json, README.md model card; no teacher, decoder or
    optimizer state).

    which: the student's weights or the EMA teacher's; results: an `evaluate` results.json
    whose tables go into the model card; format "onnx" also writes OUT_DIR/encoder.onnx;
    overwrite: write into a folder holding other files (replaces only what emotion-ssl wrote).
    """
    from emotion_ssl.export.frozen import read_weights, save_encoder_dir, validate_weights

    weights = read_weights(checkpoint)
    validate_weights(weights)
    identity = {
        "checkpoint": path_identity(checkpoint),
        "which": which,
        "format": format,
        "results": path_identity(results) if results else None,
    }
    notes = []
    if claim_encoder_dir(out_dir, "export", identity, overwrite).status == "replaced":
        notes.append(f"replacing the encoder emotion-ssl wrote in {out_dir} (--overwrite)")
    if which == "teacher":
        weights = swap_in_teacher(weights, checkpoint)
    weights.metadata["exported"] = which
    card = None
    if results:
        card = model_card_with_results(weights, results)
        weights.metadata["evaluation"] = str(results)
    out = save_encoder_dir(out_dir, weights, model_card=card, include_pretraining_state=False)
    if format == "onnx":
        from emotion_ssl.export.frozen import build_encoder
        from emotion_ssl.export.onnx import export_onnx

        onnx_path = export_onnx(build_encoder(weights).eval(), out / "encoder.onnx")
        notes.append(
            f"wrote {onnx_path} (inputs: waveforms, padding_mask; dynamic batch and length)"
        )
    notes.append(f"wrote {out} ({which})")
    return Converted(out, weights, notes)


def import_fairseq(
    checkpoint: str | Path,
    out_dir: str | Path,
    labels: str | Path | None = None,
    encoder_only: bool = False,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Converted:
    """A fairseq data2vec 2.0 / emotion2vec checkpoint (.pt) -> an emotion-ssl encoder folder,
    checked strictly (every key mapped, every shape right).

    labels: the label list of an emotion2vec+ classifier, one per line; encoder_only: leave out
    the teacher (_ema) and the decoder; trust_pickle: torch.load(weights_only=False), only for
    files you trust.
    """
    from emotion_ssl.export.fairseq import read_fairseq_checkpoint
    from emotion_ssl.export.frozen import save_encoder_dir, validate_weights
    from emotion_ssl.export.sniff import check_checkpoint_file

    if Path(checkpoint).is_dir():
        raise ValueError(
            f"{checkpoint} is a folder: import-fairseq reads one fairseq checkpoint file "
            "(.pt); an emotion-ssl encoder folder needs no import (load_encoder reads it)"
        )
    check_checkpoint_file(checkpoint)
    weights = read_fairseq_checkpoint(
        checkpoint, trust_pickle, str(labels) if labels is not None else None
    )
    validate_weights(weights)
    identity = {
        "checkpoint": path_identity(checkpoint),
        "labels": path_identity(labels) if labels else None,
        "encoder_only": encoder_only,
    }
    notes = []
    if claim_encoder_dir(out_dir, "import-fairseq", identity, overwrite).status == "replaced":
        notes.append(f"replacing the encoder emotion-ssl wrote in {out_dir} (--overwrite)")
    out = save_encoder_dir(out_dir, weights, include_pretraining_state=not encoder_only)
    dropped = []
    if encoder_only:
        parts = (("teacher", weights.teacher_state), ("decoder", weights.decoder_state))
        dropped = [name for name, state in parts if state]
    notes += [f"{'dropped':<18}  {', '.join(dropped) if dropped else 'nothing'}", f"wrote {out}"]
    return Converted(out, weights, notes)


def export_fairseq(source: str | Path, out: str | Path, overwrite: bool = False) -> Converted:
    """An emotion-ssl encoder folder or `pretrain` checkpoint -> a fairseq/FunASR checkpoint
    (.pt) with the teacher and decoder when present. `out` must not exist unless `overwrite`."""
    from emotion_ssl.export.fairseq import save_fairseq_checkpoint
    from emotion_ssl.export.frozen import read_weights, validate_weights
    from emotion_ssl.utils.outputs import check_new_file

    check_new_file(out, overwrite)
    weights = read_weights(source)
    validate_weights(weights)
    path = save_fairseq_checkpoint(
        out,
        weights.config,
        weights.encoder_state,
        weights.decoder_state,
        weights.teacher_state,
        weights.head_state,
        weights.labels,
    )
    parameters = sum(v.numel() for v in weights.encoder_state.values())
    return Converted(Path(path), weights, [f"wrote {path} ({parameters:,} encoder parameters)"])
