"""The emotion2vec encoder: CNN -> projection -> context encoder (student and teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import reduce
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from emotion_ssl.models.config import EncoderConfig
from emotion_ssl.models.feature_extractor import (
    FeatureExtractor,
    conv_output_lengths,
    lengths_to_padding_mask,
    min_samples_for_one_frame,
    normalize_waveform,
)
from emotion_ssl.models.masking import to_device
from emotion_ssl.models.transformer import (
    PositionalConv,
    TransformerBlock,
    alibi_slopes,
    attention_bias,
)


@dataclass
class ContextOutput:
    """What the context encoder computed; every sequence is [tokens; frames].

    x: (B, E+K, D) final block output; padding_mask: (B, K) bool over the frames (True =
    padding), None when nothing is padded; positions: (B, K) long, each frame's time index;
    layers: per block (prenet then shared) its output (B, E+K, D), when asked for;
    ffn_outputs: per block its FFN output f (B, E+K, D), when asked for.
    """

    x: Tensor
    padding_mask: Tensor | None
    positions: Tensor
    num_tokens: int
    layers: list[Tensor] | None = None
    ffn_outputs: list[Tensor] | None = None

    @property
    def tokens(self) -> Tensor:
        """(B, E, D) utterance-token outputs."""
        return self.x[:, : self.num_tokens]

    @property
    def frames(self) -> Tensor:
        """(B, K, D) frame outputs."""
        return self.x[:, self.num_tokens :]


@dataclass
class EncoderOutput:
    """Public output of `EmotionEncoder`.

    frames: (B, T, D) final block output at 50 Hz; padding_mask: (B, T) bool, True = padding;
    utterance: (B, D) mean over valid frames; tokens: (B, E, D) utterance-token outputs;
    layers: per block (prenet then shared, 12 for base) its output (B, T, D), on request;
    layer_results: per block its FFN output (B, T, D) (data2vec target layers), on request.
    """

    frames: Tensor
    padding_mask: Tensor
    utterance: Tensor
    tokens: Tensor
    lengths: Tensor
    layers: list[Tensor] | None = None
    layer_results: list[Tensor] | None = None


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over time of x (B, T, D) ignoring padded frames -> (B, D); padding_mask: (B, T)
    True = padding, or None."""
    if padding_mask is None:
        return reduce(x, "b t d -> b d", "mean")
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    # masked_fill, not a product: inf or NaN in padding must not reach the mean
    summed = reduce(x.masked_fill(padding_mask.unsqueeze(-1), 0.0), "b t d -> b d", "sum")
    return summed / reduce(keep, "b t 1 -> b 1", "sum").clamp_min(1.0)


class ContextEncoder(nn.Module):
    """Positional conv, utterance tokens, ALiBi, prenet and shared blocks.

    This is the part the EMA teacher copies (not the CNN, projection or decoder). With a
    mask it encodes only the unmasked frames: the transformer never sees a masked frame.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        D, H = config.embed_dim, config.num_heads
        self.config = config
        self.pos_conv = PositionalConv(
            D, config.pos_conv_kernel, config.pos_conv_groups, config.pos_conv_depth
        )
        self.utterance_tokens = nn.Parameter(torch.zeros(1, config.num_utterance_tokens, D))
        if config.num_utterance_tokens > 1:
            # token 0 starts at zero, the others N(0, 1), as in the reference
            nn.init.normal_(self.utterance_tokens[:, 1:])
        # learned per-head ALiBi scale, shared by all blocks: (1, 1, H, 1, 1) as in fairseq
        self.alibi_scale = nn.Parameter(torch.ones(1, 1, H, 1, 1))
        self.alibi_slopes: Tensor
        self.register_buffer(
            "alibi_slopes", torch.tensor(alibi_slopes(H), dtype=torch.float32), persistent=False
        )
        self.prenet_norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.prenet_dropout = nn.Dropout(config.dropout)
        self.prenet = nn.ModuleList(self._block() for _ in range(config.prenet_depth))
        self.blocks = nn.ModuleList(self._block() for _ in range(config.depth))
        self.activation_checkpointing = False
        """Recompute each block in backward instead of storing its activations (memory for
        about one extra forward of the transformer); a runtime switch, not architecture."""
        for module in [*self.prenet, *self.blocks]:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.zeros_(sub.bias)

    def _block(self) -> TransformerBlock:
        c = self.config
        return TransformerBlock(
            c.embed_dim,
            c.num_heads,
            c.mlp_ratio,
            c.norm_eps,
            c.dropout,
            c.attention_dropout,
            c.activation_dropout,
            c.post_mlp_dropout,
        )

    @property
    def num_tokens(self) -> int:
        return self.utterance_tokens.size(1)

    def forward(
        self,
        features: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        return_layers: bool = False,
        num_kept: int | None = None,
    ) -> ContextOutput:
        """features: (B, T, D) projected CNN features; padding_mask: (B, T) True = padding;
        mask: (B, T) True = masked (dropped before the transformer).

        num_kept: with `mask`, the most frames any row keeps, when the caller knows it on the
        host (exact-count masks: T - floor(mask_prob * T)); it spares reading it back from the
        device. Without `padding_mask`, every row must keep exactly `num_kept` frames.
        """
        B, T, _ = features.shape
        x = features
        if mask is not None:
            # masked frames are zeroed for the positional conv only, then dropped
            x = x.masked_fill(mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x, padding_mask)

        positions = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T): shared by all rows
        frame_padding = padding_mask
        if mask is not None:
            x, positions, frame_padding = _keep_unmasked(x, mask, padding_mask, num_kept)

        scale = self.alibi_scale.clamp_min(0).view(-1)  # a negative scale means no ALiBi
        bias = attention_bias(
            positions,
            frame_padding,
            self.alibi_slopes,
            scale,
            self.num_tokens,
            dtype=_compute_dtype(x),
        )  # (B or 1, H, E+K, E+K), built once for every block

        tokens = self.utterance_tokens.expand(x.size(0), -1, -1).to(x.dtype)
        x = torch.cat([tokens, x], dim=1)  # (B, E+K, D)
        x = self.prenet_dropout(self.prenet_norm(x))

        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        layers: list[Tensor] = []
        ffn_outputs: list[Tensor] = []
        for blocks, drop in (
            (self.prenet, self.config.prenet_layerdrop),
            (self.blocks, self.config.layerdrop),
        ):
            for block in blocks:
                # a CPU draw from the global generator: no host-device synchronisation
                if self.training and drop > 0 and float(torch.rand(())) < drop:
                    continue  # layerdrop
                if checkpointing:
                    # recompute the block in backward (dropout replays the same RNG state)
                    x, ffn_out = checkpoint(block, x, bias, use_reentrant=False)
                else:
                    x, ffn_out = block(x, bias)
                if return_layers:
                    layers.append(x)
                    ffn_outputs.append(ffn_out)

        return ContextOutput(
            x=x,
            padding_mask=frame_padding,
            positions=positions.expand(x.size(0), -1),
            num_tokens=self.num_tokens,
            layers=layers if return_layers else None,
            ffn_outputs=ffn_outputs if return_layers else None,
        )


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype attention computes in: autocast's when it is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _keep_unmasked(
    x: Tensor, mask: Tensor, padding_mask: Tensor | None, num_kept: int | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gather the unmasked valid frames of each row, in time order.

    x: (B, T, D); mask: (B, T) True = masked -> kept (B, K, D), positions (B, K),
    kept padding mask (B, K) or None when every row keeps K frames. K = `num_kept` when given
    (no device read); else the largest kept count, read from the device (one sync).
    """
    drop = mask if padding_mask is None else mask | padding_mask
    keep_count = (~drop).sum(dim=1)  # (B,)
    K = int(keep_count.max()) if num_kept is None else num_kept
    # a stable sort puts the kept frames first, in time order
    order = torch.sort(drop.to(torch.uint8), dim=1, stable=True).indices[:, :K]  # (B, K)
    kept = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.size(-1)))
    kept_padding = torch.arange(K, device=x.device).unsqueeze(0) >= keep_count.unsqueeze(1)
    if num_kept is not None:
        # known on the host: no padding at all, or a padding mask (maybe all False) to apply
        return kept, order, None if padding_mask is None else kept_padding
    return kept, order, kept_padding if bool(kept_padding.any()) else None


class EmotionEncoder(nn.Module):
    """Raw 16 kHz audio -> 50 Hz frame features, utterance tokens and utterance vector.

    >>> encoder = EmotionEncoder(EncoderConfig.tiny()).eval()
    >>> out = encoder(torch.randn(2, 16000), lengths=torch.tensor([16000, 12000]))
    >>> out.frames.shape, out.utterance.shape, out.tokens.shape
    (torch.Size([2, 49, 64]), torch.Size([2, 64]), torch.Size([2, 10, 64]))
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        self.feature_extractor = FeatureExtractor(config.conv_layers)
        self.feature_norm = nn.LayerNorm(config.conv_channels)
        self.feature_proj = nn.Linear(config.conv_channels, config.embed_dim)
        self.context = ContextEncoder(config)
        self.min_samples = min_samples_for_one_frame(config.conv_layers)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames (the conv length formula, layer by layer)."""
        return conv_output_lengths(lengths, self.config.conv_layers)

    def local_features(
        self, waveforms: Tensor, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Normalise, run the CNN and project.

        waveforms: (B, S) raw audio; lengths: (B,) samples or None (all full) ->
        features (B, T, D), padding_mask (B, T) or None, frame lengths (B,)
        """
        if waveforms.dim() != 2:
            raise ValueError(
                f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}"
            )
        B, S = waveforms.shape
        if lengths is None:
            lengths = torch.full((B,), S, dtype=torch.long, device=waveforms.device)
        lengths = lengths.long()
        # checks and the padding decision read `lengths` where it lives: free for host lengths
        # (what PretrainSystem passes), one synchronisation for lengths on an accelerator
        if bool((lengths > S).any()) or bool((lengths < self.min_samples).any()):
            raise ValueError(
                f"every length must be in [{self.min_samples}, {S}] samples "
                f"(the CNN needs {self.min_samples} for one frame); got {lengths.tolist()}"
            )
        frame_lengths = self.frame_lengths(lengths)  # (B,) on lengths' device
        T = int(self.frame_lengths(torch.tensor([S]))[0])
        padded = bool((frame_lengths < T).any())
        lengths = to_device(lengths, waveforms.device)
        frame_lengths = to_device(frame_lengths, waveforms.device)
        if self.config.normalize_waveform:
            x = normalize_waveform(waveforms, lengths)  # (B, S), padding = 0
        else:
            x = waveforms.float().masked_fill(lengths_to_padding_mask(lengths, S), 0.0)
        x = self.feature_extractor(x.to(self.feature_proj.weight.dtype))  # (B, C, T)
        x = self.feature_proj(self.feature_norm(x.transpose(1, 2)))  # (B, T, D)
        if not padded:
            return x, None, frame_lengths
        padding_mask = lengths_to_padding_mask(frame_lengths, T)
        # zero padded frames: nothing downstream may read them
        return x.masked_fill(padding_mask.unsqueeze(-1), 0.0), padding_mask, frame_lengths

    def forward(
        self, waveforms: Tensor, lengths: Tensor | None = None, return_layers: bool = False
    ) -> EncoderOutput:
        """waveforms: (B, S) raw 16 kHz audio; lengths: (B,) valid samples per row."""
        features, padding_mask, frame_lengths = self.local_features(waveforms, lengths)
        out = self.context(features, padding_mask, return_layers=return_layers)
        E = out.num_tokens
        frames = out.frames
        B, T = frames.shape[:2]
        full_mask = (
            padding_mask
            if padding_mask is not None
            else torch.zeros(B, T, dtype=torch.bool, device=frames.device)
        )
        return EncoderOutput(
            frames=frames,
            padding_mask=full_mask,
            utterance=masked_mean(frames, padding_mask),
            tokens=out.tokens,
            lengths=frame_lengths,
            layers=[h[:, E:] for h in out.layers] if out.layers is not None else None,
            layer_results=[f[:, E:] for f in out.ffn_outputs]
            if out.ffn_outputs is not None
            else None,
        )


__all__ = ["ContextEncoder", "ContextOutput", "EmotionEncoder", "EncoderOutput", "masked_mean"]
