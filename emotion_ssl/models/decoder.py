"""The pretraining decoder: student frames + noise at masked positions -> target predictions."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.models.config import EncoderConfig
from emotion_ssl.models.feature_extractor import conv1d_time_last


def scatter_to_time(
    frames: Tensor,
    positions: Tensor,
    frame_padding: Tensor | None,
    num_frames: int,
    noise_std: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Put the encoded (kept) frames back at their time positions; other positions get
    N(0, noise_std) noise.

    frames: (R, K, D); positions: (R, K) time index of each kept frame; frame_padding:
    (R, K) True = not a real kept frame -> (R, T, D)
    """
    R, K, D = frames.shape
    if noise_std > 0:
        noise = torch.randn(R, num_frames, D, generator=generator, dtype=torch.float32)
        out = (noise * noise_std).to(device=frames.device, dtype=frames.dtype)
    else:
        out = frames.new_zeros(R, num_frames, D)
    src = frames
    index = positions
    if frame_padding is not None:
        # padded slots would overwrite a real position: send them to a scratch column
        out = torch.cat([out, out.new_zeros(R, 1, D)], dim=1)
        index = positions.masked_fill(frame_padding, num_frames)
    out = out.scatter(1, index.unsqueeze(-1).expand(-1, -1, D), src)
    return out[:, :num_frames]


class ConvDecoder(nn.Module):
    """layers x [grouped Conv1d(k) -> LayerNorm(no affine) -> GELU], residual between equal
    widths, then Linear(decoder_dim -> D). Padded frames are zeroed before every conv."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        D, C, k = config.embed_dim, config.decoder_dim, config.decoder_kernel
        self.input_dropout = nn.Dropout(config.decoder_input_dropout)
        self.convs = nn.ModuleList(
            nn.Conv1d(D if i == 0 else C, C, k, padding=k // 2, groups=config.decoder_groups)
            for i in range(config.decoder_layers)
        )
        self.proj = nn.Linear(C, D)
        self.dim = C

    def make_input(
        self,
        frames: Tensor,
        positions: Tensor,
        frame_padding: Tensor | None,
        num_frames: int,
        noise_std: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Student kept frames (R, K, D) -> decoder input (R, T, D): input dropout, then the
        frames at their time positions and N(0, noise_std) noise at the masked ones."""
        frames = self.input_dropout(frames)
        return scatter_to_time(frames, positions, frame_padding, num_frames, noise_std, generator)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (R, T, D) decoder input; padding_mask: (R, T) True = padding -> (R, T, D)"""
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)
        h = x  # time-major throughout: no transposed copies (see conv1d_time_last)
        residual = h
        for conv in self.convs:
            if keep is not None:
                h = h * keep
            h = F.gelu(F.layer_norm(conv1d_time_last(h, cast(nn.Conv1d, conv)), (self.dim,)))
            if residual.size(-1) == h.size(-1):
                h = h + residual
            residual = h
        return self.proj(h)
