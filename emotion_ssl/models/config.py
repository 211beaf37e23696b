"""Architecture configuration of the emotion2vec / data2vec 2.0 encoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

ConvSpec = tuple[int, int, int]  # (channels, kernel, stride)

SAMPLE_RATE = 16_000
"""Samples per second of the audio every encoder reads (the CNN's hop of 320 samples is 20 ms
at this rate). The one place 16 kHz is written."""

Preset = Literal["tiny", "base"]


class SettingsError(ValueError):
    """A setting that cannot work, named with its value (`emotion-ssl pretrain` reports it as a
    one-line option error before anything is built)."""


def _base_conv_layers() -> list[ConvSpec]:
    return [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@dataclass
class EncoderConfig:
    """Every architectural choice of the encoder (student and teacher share it).

    Defaults are the released emotion2vec_base values (SPEC section 1); `tiny()` is the
    test-size model with the same structure.
    """

    normalize_waveform: bool = True
    """Normalise each utterance to zero mean, unit variance over its valid samples first."""

    conv_layers: list[ConvSpec] = field(default_factory=_base_conv_layers)
    """CNN feature extractor as (channels, kernel, stride) per layer; the strides multiply to
    the hop (320 samples = 20 ms at 16 kHz)."""

    embed_dim: int = 768
    """Model width D of the transformer and of every frame feature."""

    num_heads: int = 12
    """Attention heads per block; also the number of ALiBi slopes."""

    mlp_ratio: float = 4.0
    """FFN hidden width as a multiple of `embed_dim`."""

    prenet_depth: int = 4
    """Blocks in the modality-specific prenet (with a LayerNorm on its input)."""

    depth: int = 8
    """Shared blocks after the prenet; the teacher's targets come from these."""

    num_utterance_tokens: int = 10
    """Learnable utterance tokens prepended to the frames (0 for data2vec 2.0)."""

    pos_conv_width: int = 95
    """Total receptive width of the positional convolution; kernel = max(3, width // depth)."""

    pos_conv_groups: int = 16
    """Groups of each positional convolution layer."""

    pos_conv_depth: int = 5
    """Number of positional convolution layers."""

    norm_eps: float = 1e-5
    """Epsilon of every LayerNorm in the transformer."""

    dropout: float = 0.1
    """Dropout after the attention projection and on the prenet input ("encoder dropout")."""

    attention_dropout: float = 0.1
    """Dropout on the attention weights."""

    activation_dropout: float = 0.0
    """Dropout inside the FFN after the activation."""

    post_mlp_dropout: float = 0.1
    """Dropout on the FFN output before the residual sum."""

    layerdrop: float = 0.05
    """Probability of skipping each shared block in training."""

    prenet_layerdrop: float = 0.05
    """Probability of skipping each prenet block in training."""

    decoder_dim: int = 384
    """Channels of the pretraining decoder's convolutions."""

    decoder_kernel: int = 7
    """Kernel of the decoder's convolutions."""

    decoder_layers: int = 4
    """Number of decoder convolution layers."""

    decoder_groups: int = 16
    """Groups of the decoder's convolutions."""

    decoder_input_dropout: float = 0.1
    """Dropout on the student output before it enters the decoder."""

    mask_noise_std: float = 0.01
    """Std of the noise that fills masked positions at the decoder input."""

    TRAINING_FIELDS = (
        "normalize_waveform",
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "post_mlp_dropout",
        "layerdrop",
        "prenet_layerdrop",
        "decoder_input_dropout",
        "mask_noise_std",
    )
    """Fields that set training or input handling, not the weights' shapes (a pretrained
    file may be loaded with other values, e.g. dropout 0 to debug one step)."""

    DECODER_FIELDS = ("decoder_dim", "decoder_kernel", "decoder_layers", "decoder_groups")

    def architecture_differences(
        self, other: EncoderConfig, *, ignore: tuple[str, ...] = ()
    ) -> list[str]:
        """Fields (other than training settings and `ignore`) on which two configs differ."""
        skip = set(self.TRAINING_FIELDS) | set(ignore)
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)
        ]

    @property
    def pos_conv_kernel(self) -> int:
        return max(3, self.pos_conv_width // self.pos_conv_depth)

    @property
    def conv_channels(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def hop_length(self) -> int:
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop

    @property
    def num_layers(self) -> int:
        return self.prenet_depth + self.depth

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in layer) for layer in self.conv_layers]  # type: ignore[misc]
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.embed_dim % self.pos_conv_groups:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by pos_conv_groups={self.pos_conv_groups}"
            )
        if self.decoder_dim % self.decoder_groups or self.embed_dim % self.decoder_groups:
            raise ValueError(
                f"decoder_groups={self.decoder_groups} must divide decoder_dim={self.decoder_dim} "
                f"and embed_dim={self.embed_dim}"
            )
        if self.decoder_kernel % 2 == 0:
            raise ValueError(f"decoder_kernel={self.decoder_kernel} must be odd")
        if self.pos_conv_kernel % 2 == 0:
            raise ValueError(f"positional conv kernel {self.pos_conv_kernel} must be odd")
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be at least 1")

    @classmethod
    def base(cls) -> EncoderConfig:
        """The released emotion2vec_base size: 93 171 212 parameters (93 790 988 with decoder)."""
        return cls()

    @classmethod
    def tiny(cls) -> EncoderConfig:
        """A few hundred thousand parameters, same structure (the golden tiny model's sizes)."""
        return cls(
            conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
            embed_dim=64,
            num_heads=4,
            prenet_depth=1,
            depth=2,
            pos_conv_groups=4,
            decoder_dim=32,
            decoder_groups=4,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        """A named size (`tiny`, `base`) with some fields changed:
        `EncoderConfig.from_preset("tiny", dropout=0.0)`. An unknown preset or field is an
        error naming it."""
        presets = {"tiny": cls.tiny, "base": cls.base}
        if name not in presets:
            raise SettingsError(f"unknown encoder preset {name!r}; use one of {sorted(presets)}")
        return cls.from_dict({**presets[name]().to_dict(), **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderConfig:
        """Build from `to_dict()` output; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown EncoderConfig fields: {unknown}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["conv_layers"] = [list(layer) for layer in self.conv_layers]
        return out


@dataclass
class EncoderSettings:
    """Which encoder a training run builds: a named preset and the fields it changes."""

    preset: Preset = "base"
    """Encoder size: "tiny" (tests, the demo) or "base" (emotion2vec_base, 93.2 M parameters)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    """EncoderConfig fields to change, e.g. {"dropout": 0.0} (on the command line
    `--model.encoder.overrides.dropout 0`); an unknown field is an error naming it."""

    def __post_init__(self) -> None:
        self.resolve()  # an unknown preset or field fails here, not at the first step

    def resolve(self) -> EncoderConfig:
        return EncoderConfig.from_preset(self.preset, **self.overrides)
