"""One in-memory form for every kind of saved encoder (ours, fairseq, Lightning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from emotion_ssl.models.config import EncoderConfig


@dataclass
class PretrainedWeights:
    """An encoder's architecture and weights, plus whatever pretraining state came with it.

    encoder_state: `EmotionEncoder` keys (the student); decoder_state: `ConvDecoder` keys;
    teacher_state: `ContextEncoder` keys of the EMA teacher; head_state / head_config: a
    `ClassificationHead` (its state dict and constructor arguments); labels: its class
    names. Absent parts are None.
    """

    path: str
    config: EncoderConfig
    encoder_state: dict[str, Tensor]
    decoder_state: dict[str, Tensor] | None = None
    teacher_state: dict[str, Tensor] | None = None
    head_state: dict[str, Tensor] | None = None
    head_config: dict[str, Any] | None = None
    labels: list[str] | None = None
    source_format: str = "emotion-ssl"
    source_dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts for a person to read: parameters, blocks, tokens, what came along."""
        c = self.config
        return {
            "source": self.path,
            "format": self.source_format,
            "dtype": self.source_dtype,
            "encoder_parameters": sum(v.numel() for v in self.encoder_state.values()),
            "blocks": f"{c.prenet_depth} prenet + {c.depth} shared, dim {c.embed_dim}, {c.num_heads} heads",
            "utterance_tokens": c.num_utterance_tokens,
            "teacher": self.teacher_state is not None,
            "decoder": self.decoder_state is not None,
            "classifier": None
            if self.head_config is None
            else f"{self.head_config['pooling']} pooling, {self.head_config['num_classes']} classes",
            "labels": self.labels,
        }
