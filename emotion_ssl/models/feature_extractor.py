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


def conv1d_time_last(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv` applied to x (B, T, C_in) -> (B, T', C_out), both time-major.

    Runs as a 2-D convolution over (B, C, 1, T) in channels-last layout, which is exactly the
    memory of a (B, T, C) tensor: no transposed copy on the way in or out, and the LayerNorm
    over channels that follows reads contiguous rows. Same weights and result as `conv` on
    x.transpose(1, 2) (up to the convolution algorithm's rounding).
    """
    y = F.conv2d(
        x.transpose(1, 2).unsqueeze(2),  # (B, C_in, 1, T), strides of channels-last
        conv.weight.unsqueeze(2),  # (C_out, C_in / groups, 1, k)
        conv.bias,
        stride=(1, conv.stride[0]),
        padding=(0, int(conv.padding[0])),  # type: ignore[arg-type]
        dilation=(1, conv.dilation[0]),
        groups=conv.groups,
    )  # (B, C_out, 1, T')
    return y.squeeze(2).transpose(1, 2)  # (B, T', C_out), a view


class ConvLayer(nn.Module):
    """Conv1d (no bias) -> Dropout -> LayerNorm over channels -> GELU, time-major:
    (B, T, C_in) -> (B, T', C_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        h = conv1d_time_last(x, self.conv)
        # fp32 upcast: the reference's Fp32LayerNorm, stable under bf16 autocast
        h = F.layer_norm(
            h.float(),
            self.norm.normalized_shape,
            self.norm.weight.float(),
            self.norm.bias.float(),
            self.norm.eps,
        ).type_as(h)
        return F.gelu(h)


class FeatureExtractor(nn.Module):
    """7-layer CNN: (B, S) samples -> (B, C, T) frames at 50 Hz for the base spec.

    A valid output frame only sees valid input samples (no padding on the convolutions), so
    a padded batch gives the same valid frames as each utterance alone. Computed time-major
    (see `conv1d_time_last`); the (B, C, T) result is a transposed view of (B, T, C) memory.
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
        x = waveforms.unsqueeze(2)  # (B, S, 1): time-major, one channel
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)
