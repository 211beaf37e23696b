"""Analytic FLOPs of pretraining and extraction, per second of audio.

What is counted: every matrix product and convolution, as 2 FLOPs per multiply-accumulate —
the CNN, the feature projection, the positional convolution, the transformer's linear layers
(qkv, output projection, FFN) and its attention products (QK^T and attention x V), and the
decoder. Not counted: norms, GELU, softmax, dropout, masking, losses, the optimizer and the EMA
update (all linear in the parameter or activation count, a few percent at most).

Training multiplier: a trained part costs forward + backward = 3x its forward (backward = 2x
forward: the input gradient and the weight gradient); the teacher runs forward only. The CNN's
first layer needs no input gradient but is counted at 3x too (it is 0.3% of the CNN). Layerdrop
is ignored: every block is counted, so the figure is an upper bound by about `layerdrop`.

The cost depends on the clip length (the attention term grows with it and the utterance tokens
are amortised over it), so every function takes `clip_seconds`; batches are assumed cropped
to that length (the reference's way), not padded.

>>> from emotion_ssl.models import EncoderConfig
>>> round(pretrain_flops(EncoderConfig.base(), clip_seconds=10.0).total / 1e9)
147
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from emotion_ssl.models.config import SAMPLE_RATE, EncoderConfig

TRAIN_MULTIPLIER = 3  # forward + backward (backward = 2x forward)


def conv_frame_counts(num_samples: int, config: EncoderConfig) -> list[int]:
    """Output length of every CNN layer: floor((L - k) / s) + 1, layer by layer."""
    counts = []
    length = num_samples
    for _, kernel, stride in config.conv_layers:
        length = max(0, (length - kernel) // stride + 1)
        counts.append(length)
    return counts


def cnn_macs(num_samples: int, config: EncoderConfig) -> int:
    """Multiply-accumulates of the CNN feature extractor on one clip."""
    macs = 0
    in_channels = 1
    for (channels, kernel, _), out_len in zip(
        config.conv_layers, conv_frame_counts(num_samples, config), strict=True
    ):
        macs += out_len * channels * in_channels * kernel
        in_channels = channels
    return macs


def projection_macs(num_frames: int, config: EncoderConfig) -> int:
    """LayerNorm(C) -> Linear(C -> D) on every frame (the norm is not counted)."""
    return num_frames * config.conv_channels * config.embed_dim


def pos_conv_macs(num_frames: int, config: EncoderConfig) -> int:
    """The grouped positional convolutions (D -> D, kernel k, groups g) on `num_frames`."""
    D = config.embed_dim
    per_frame = D * (D // config.pos_conv_groups) * config.pos_conv_kernel
    return num_frames * per_frame * config.pos_conv_depth


def block_macs(seq_len: int, config: EncoderConfig) -> int:
    """One transformer block on a sequence of `seq_len` rows (tokens + frames).

    Linear: qkv 3D^2 + output D^2 + FFN 2 D H_mlp per row; attention: L^2 D for QK^T and
    L^2 D for attention x V.
    """
    D = config.embed_dim
    hidden = int(D * config.mlp_ratio)
    linear = seq_len * (4 * D * D + 2 * D * hidden)
    attention = 2 * seq_len * seq_len * D
    return linear + attention


def transformer_macs(seq_len: int, config: EncoderConfig) -> int:
    """Prenet + shared blocks on one sequence of `seq_len` rows."""
    return config.num_layers * block_macs(seq_len, config)


def decoder_macs(num_frames: int, config: EncoderConfig) -> int:
    """The pretraining decoder's grouped convolutions and final Linear on `num_frames`."""
    D, C, k, g = config.embed_dim, config.decoder_dim, config.decoder_kernel, config.decoder_groups
    per_frame = 0
    in_channels = D
    for _ in range(config.decoder_layers):
        per_frame += C * (in_channels // g) * k
        in_channels = C
    per_frame += C * D
    return num_frames * per_frame


@dataclass
class PretrainFlops:
    """FLOPs per second of audio of one pretraining step, by part (training multiplier
    included for the trained parts). `total` sums them."""

    cnn: float
    projection: float
    student_pos_conv: float
    student_transformer: float
    decoder: float
    teacher_pos_conv: float
    teacher_transformer: float

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        out["total"] = self.total
        return out


def pretrain_flops(
    config: EncoderConfig,
    clip_seconds: float = 10.0,
    num_clones: int = 8,
    mask_prob: float = 0.5,
    sample_rate: int = SAMPLE_RATE,
) -> PretrainFlops:
    """FLOPs per second of audio of one pretraining step on clips of `clip_seconds`.

    Student: CNN and projection once per clip; positional conv on all T frames of every clone
    (masked frames are zeroed, not dropped, there); transformer on the E tokens + K kept frames
    of every clone, K = T - floor(mask_prob * T); decoder on all T frames of every clone. All
    trained (3x forward). Teacher: positional conv and transformer on E + T rows, forward only.
    """
    samples = int(round(clip_seconds * sample_rate))
    T = conv_frame_counts(samples, config)[-1]
    K = T - int(T * mask_prob)
    E = config.num_utterance_tokens
    C = num_clones
    train = 2 * TRAIN_MULTIPLIER / clip_seconds  # 2 FLOPs per MAC, per second of audio
    forward = 2 / clip_seconds
    return PretrainFlops(
        cnn=train * cnn_macs(samples, config),
        projection=train * projection_macs(T, config),
        student_pos_conv=train * C * pos_conv_macs(T, config),
        student_transformer=train * C * transformer_macs(E + K, config),
        decoder=train * C * decoder_macs(T, config),
        teacher_pos_conv=forward * pos_conv_macs(T, config),
        teacher_transformer=forward * transformer_macs(E + T, config),
    )


def inference_flops(
    config: EncoderConfig, clip_seconds: float = 10.0, sample_rate: int = SAMPLE_RATE
) -> float:
    """FLOPs per second of audio of one encoder forward pass (feature extraction)."""
    samples = int(round(clip_seconds * sample_rate))
    T = conv_frame_counts(samples, config)[-1]
    macs = (
        cnn_macs(samples, config)
        + projection_macs(T, config)
        + pos_conv_macs(T, config)
        + transformer_macs(config.num_utterance_tokens + T, config)
    )
    return 2 * macs / clip_seconds


# Dense peak FLOP/s of known accelerators, for model FLOPs utilisation (MFU).
PEAK_FLOPS: dict[tuple[str, str], float] = {
    ("H100", "bf16"): 989e12,
    ("H100", "fp16"): 989e12,
    ("H100", "tf32"): 494.5e12,
    ("H100", "fp32"): 66.9e12,
    ("H200", "bf16"): 989e12,
    ("H200", "fp16"): 989e12,
    ("H200", "tf32"): 494.5e12,
    ("H200", "fp32"): 66.9e12,
    ("A100", "bf16"): 312e12,
    ("A100", "fp16"): 312e12,
    ("A100", "tf32"): 156e12,
    ("A100", "fp32"): 19.5e12,
}


def peak_flops(device_name: str, dtype: str) -> float | None:
    """The table's peak for a device name containing a known model (e.g. "NVIDIA H100 80GB
    HBM3") and a compute dtype ("bf16", "fp16", "tf32", "fp32"); None when unknown."""
    for (model, kind), value in PEAK_FLOPS.items():
        if model in device_name.upper() and kind == dtype:
            return value
    return None


__all__ = [
    "PEAK_FLOPS",
    "PretrainFlops",
    "block_macs",
    "cnn_macs",
    "conv_frame_counts",
    "decoder_macs",
    "inference_flops",
    "peak_flops",
    "pos_conv_macs",
    "pretrain_flops",
    "projection_macs",
    "transformer_macs",
]
