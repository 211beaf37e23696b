"""Test helper: small fairseq-layout checkpoints (importable from every test folder, since
pytest puts tests/ on sys.path for its conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from emotion_ssl.export.fairseq import fairseq_model_config, fairseq_state_dict
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
