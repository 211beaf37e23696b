"""Waveform normalisation and the CNN feature extractor (samples -> 50 Hz frames)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.models.config import ConvSpec


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths: (B,) -> (B, max_len) bool, True = padding."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def normalize_waveform(waveforms: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per utterance over its valid samples only.

    Matches `F.layer_norm(w, w.shape)` of the reference on an unpadded utterance (biased
    variance, eps inside the square root); padded samples come out as exactly 0.

    waveforms: (B, S) float; lengths: (B,) samples -> (B, S) float32
    """
    x = waveforms.float()
    valid = ~lengths_to_padding_mask(lengths, x.size(1))  # (B, S)
    count = lengths.clamp_min(1).to(x.dtype).unsqueeze(1)  # (B, 1)
    x = x * valid
    mean = x.sum(dim=1, keepdim=True) / count
    centred = (x - mean) * valid
    var = centred.pow(2).sum(dim=1, keepdim=True) / count  # biased, like layer_norm
    return centred * torch.rsqrt(var + eps)


def conv_output_lengths(lengths: Tensor, conv_layers: list[ConvSpec]) -> Tensor:
    """Frames per utterance: floor((L - k) / s) + 1 applied layer by layer (0 when too short)."""
    out = lengths.long()
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
        out = out.clamp_min(0)
    return out


def min_samples_for_one_frame(conv_layers: list[ConvSpec]) -> int:
    """The receptive field of the CNN: the shortest input giving one frame (400 for base)."""
    need = 1
    for _, kernel, stride in reversed(conv_layers):
        need = (need - 1) * stride + kernel
    return need


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor, computed in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        # fp32 upcast: the reference's Fp32LayerNorm, stable under bf16 autocast
        y = F.layer_norm(
            x.transpose(1, 2).float(),
            self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return y.transpose(1, 2).type_as(x)


class ConvLayer(nn.Module):
    """Conv1d (no bias) -> Dropout -> LayerNorm over channels -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = _ChannelLayerNorm(out_channels, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.norm(self.conv(x)))


class FeatureExtractor(nn.Module):
    """7-layer CNN: (B, S) samples -> (B, C, T) frames at 50 Hz for the base spec.

    A valid output frame only sees valid input samples (no padding on the convolutions), so
    a padded batch gives the same valid frames as each utterance alone.
    """

    def __init__(self, conv_layers: list[ConvSpec]) -> None:
        super().__init__()
        self.conv_layers = list(conv_layers)
        layers = []
        in_channels = 1
        for channels, kernel, stride in self.conv_layers:
            layers.append(ConvLayer(in_channels, channels, kernel, stride))
            in_channels = channels
        self.layers = nn.ModuleList(layers)

    def forward(self, waveforms: Tensor) -> Tensor:
        """waveforms: (B, S) -> (B, C, T)"""
        x = waveforms.unsqueeze(1)  # (B, 1, S)
        for layer in self.layers:
            x = layer(x)
        return x
