"""Encoder: sizes, frame counts, padding invariance, and the reference's forward pass."""

from __future__ import annotations

import pytest
import torch

from emotion_ssl import EmotionEncoder, EncoderConfig
from emotion_ssl.export.fairseq import encoder_config_from_fairseq, split_fairseq_state_dict
from emotion_ssl.models.feature_extractor import conv_output_lengths, normalize_waveform
from emotion_ssl.models.transformer import alibi_slopes


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_base_parameter_counts() -> None:
    from emotion_ssl.models.decoder import ConvDecoder

    config = EncoderConfig.base()
    encoder = EmotionEncoder(config)
    assert count(encoder) == 93_171_212
    assert count(encoder) + count(ConvDecoder(config)) == 93_790_988
    # the reference's per-group counts (golden README)
    assert count(encoder.feature_extractor) == 4_206_592
    assert count(encoder.feature_norm) + count(encoder.feature_proj) == 395_008
    assert count(encoder.context.pos_conv) == 3_505_920
    assert count(encoder.context.prenet) + count(encoder.context.prenet_norm) == 28_353_024
    assert count(encoder.context.blocks) == 56_702_976


def test_tiny_is_a_few_hundred_thousand_parameters() -> None:
    assert count(EmotionEncoder(EncoderConfig.tiny())) == 267_652


def test_alibi_slopes_match_the_reference_order() -> None:
    assert alibi_slopes(4) == [0.25, 0.0625, 0.015625, 0.00390625]
    twelve = alibi_slopes(12)
    assert twelve[:8] == [0.5 ** (i + 1) for i in range(8)]
    assert twelve[8:] == pytest.approx([0.70710678, 0.35355339, 0.17677670, 0.08838835])


@pytest.mark.parametrize(
    ("samples", "frames"), [(400, 1), (16000, 49), (23456, 73), (40000, 124), (64000, 199)]
)
def test_frame_count_follows_the_conv_formula(samples: int, frames: int) -> None:
    config = EncoderConfig.tiny()
    assert int(conv_output_lengths(torch.tensor([samples]), config.conv_layers)) == frames
    encoder = EmotionEncoder(config).eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, samples))
    assert out.frames.shape == (1, frames, config.embed_dim)
    assert out.tokens.shape == (1, 10, config.embed_dim)


def test_too_short_input_is_a_clear_error() -> None:
    encoder = EmotionEncoder(EncoderConfig.tiny())
    with pytest.raises(ValueError, match="needs 400 for one frame"):
        encoder(torch.randn(1, 399))


def test_normalisation_uses_valid_samples_only() -> None:
    torch.manual_seed(0)
    wave = torch.randn(1000) * 0.3 + 0.2
    padded = torch.cat([wave, torch.full((500,), 7.0)]).unsqueeze(0)
    out = normalize_waveform(padded, torch.tensor([1000]))
    expected = torch.nn.functional.layer_norm(wave, wave.shape)
    assert torch.allclose(out[0, :1000], expected, atol=1e-6)
    assert torch.all(out[0, 1000:] == 0)


def test_padded_batch_equals_one_at_a_time() -> None:
    torch.manual_seed(0)
    encoder = EmotionEncoder(EncoderConfig.tiny()).eval()
    lengths = [16000, 9100, 23456, 4000]
    waves = [torch.randn(n) * 0.1 for n in lengths]
    batch = torch.full((len(waves), max(lengths)), 3.0)  # garbage padding must not leak
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        out = encoder(batch, torch.tensor(lengths), return_layers=True)
        for i, w in enumerate(waves):
            single = encoder(w.unsqueeze(0), return_layers=True)
            T = single.frames.size(1)
            assert int(out.lengths[i]) == T
            assert not out.padding_mask[i, :T].any() and out.padding_mask[i, T:].all()
            assert (out.frames[i, :T] - single.frames[0]).abs().max() <= 1e-5
            assert (out.tokens[i] - single.tokens[0]).abs().max() <= 1e-5
            assert (out.utterance[i] - single.utterance[0]).abs().max() <= 1e-5
            assert out.layers is not None and single.layers is not None
            for a, b in zip(out.layers, single.layers, strict=True):
                assert (a[i, :T] - b[0]).abs().max() <= 1e-5


def _load_golden_encoder(golden_dir) -> EmotionEncoder:
    ckpt = torch.load(golden_dir / "emotion2vec_tiny" / "checkpoint.pt")
    config = encoder_config_from_fairseq(ckpt["cfg"]["model"])
    encoder_state, _, unmapped = split_fairseq_state_dict(ckpt["model"])
    assert unmapped == []
    encoder = EmotionEncoder(config)
    encoder.load_state_dict(encoder_state, strict=True)
    return encoder.eval()


def test_matches_reference_forward_one_at_a_time(golden_dir) -> None:
    encoder = _load_golden_encoder(golden_dir)
    inputs = torch.load(golden_dir / "emotion2vec_tiny" / "inputs.pt")
    expected = torch.load(golden_dir / "emotion2vec_tiny" / "expected.pt")
    with torch.no_grad():
        for wave, ref in zip(inputs["waveforms"], expected["single"], strict=True):
            source = normalize_waveform(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            assert (source[0] - ref["source"]).abs().max() <= 1e-6
            out = encoder(wave.unsqueeze(0), return_layers=True)
            assert out.frames.shape[1] == ref["num_frames"]
            assert (out.frames[0] - ref["x"]).abs().max() <= 1e-4
            assert (out.utterance[0] - ref["x_mean"]).abs().max() <= 1e-5
            assert (out.tokens[0] - ref["extra_tokens_out"]).abs().max() <= 1e-4
            # the reference's layer_results are the shared blocks' FFN outputs, tokens included
            E = 10
            assert out.layer_results is not None
            shared = torch.stack([f[0] for f in out.layer_results[encoder.config.prenet_depth :]])
            assert (shared - ref["layer_results"][:, E:]).abs().max() <= 1e-4


def test_padded_batch_matches_reference_single_outputs(golden_dir) -> None:
    """Unlike the reference (whose padded batch leaks up to 3.8), ours equals one-at-a-time."""
    encoder = _load_golden_encoder(golden_dir)
    inputs = torch.load(golden_dir / "emotion2vec_tiny" / "inputs.pt")
    expected = torch.load(golden_dir / "emotion2vec_tiny" / "expected.pt")
    lengths = torch.tensor(inputs["lengths"])
    batch = torch.zeros(3, int(lengths.max()))
    for i, wave in enumerate(inputs["waveforms"]):
        batch[i, : wave.numel()] = wave
    with torch.no_grad():
        out = encoder(batch, lengths)
    assert torch.equal(out.padding_mask, expected["batched"]["padding_mask_out"])
    for i, ref in enumerate(expected["single"]):
        T = ref["num_frames"]
        assert (out.frames[i, :T] - ref["x"]).abs().max() <= 1e-4
        assert (out.tokens[i] - ref["extra_tokens_out"]).abs().max() <= 1e-4


def test_attention_bias_matches_reference_with_clamped_scale(golden_dir) -> None:
    """Head 3's stored scale is -0.25: clamped at 0 it gets no ALiBi bias at all."""
    from emotion_ssl.models.transformer import attention_bias

    encoder = _load_golden_encoder(golden_dir)
    context = encoder.context
    assert float(context.alibi_scale.detach().view(-1)[3]) == -0.25
    expected = torch.load(golden_dir / "emotion2vec_tiny" / "expected.pt")
    bias_ref = expected["single"][0]["intermediates"]["alibi_bias_scaled"]  # (H, E+T, E+T)
    T = expected["single"][0]["num_frames"]
    scale = context.alibi_scale.detach().clamp_min(0).view(-1)
    bias = attention_bias(torch.arange(T).unsqueeze(0), None, context.alibi_slopes, scale, 10)[0]
    assert (bias - bias_ref).abs().max() <= 1e-6
    assert torch.all(bias[3] == 0)
