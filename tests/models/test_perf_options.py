"""Performance paths give the same numbers as the plain ones: time-major convolutions, the
host-known kept count, the shared attention bias, activation checkpointing, compile and
host-side lengths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from emotion_ssl import EmotionEncoder, EncoderConfig
from emotion_ssl.losses import ObjectiveSettings
from emotion_ssl.models.config import EncoderSettings
from emotion_ssl.models.encoder import ContextEncoder, _compute_dtype, _keep_unmasked
from emotion_ssl.models.feature_extractor import conv1d_time_last
from emotion_ssl.models.masking import MaskingSettings, compute_span_mask
from emotion_ssl.models.transformer import attention_bias

if TYPE_CHECKING:
    from emotion_ssl.train.pretrain import PretrainSystem

torch.set_num_threads(2)


def tiny_context(seed: int = 0, **overrides: float) -> ContextEncoder:
    torch.manual_seed(seed)
    return ContextEncoder(EncoderConfig.from_dict({**EncoderConfig.tiny().to_dict(), **overrides}))


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "groups"),
    [(1, 8, 10, 5, 0, 1), (8, 8, 3, 2, 0, 1), (16, 16, 19, 1, 9, 4), (16, 8, 7, 1, 3, 4)],
)
def test_time_major_conv_equals_conv1d(
    cin: int, cout: int, kernel: int, stride: int, padding: int, groups: int
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, groups=groups)
    x = torch.randn(3, 50, cin, requires_grad=True)  # (B, T, C)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    got = conv1d_time_last(x, conv)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5
    (g_expected,) = torch.autograd.grad(expected.pow(2).sum(), x)
    (g_got,) = torch.autograd.grad(got.pow(2).sum(), x)
    assert (g_got - g_expected).abs().max() <= 1e-4


@pytest.mark.parametrize("padded", [False, True])
def test_host_known_kept_count_gives_the_same_gather(padded: bool) -> None:
    torch.manual_seed(0)
    T = 40
    lengths = torch.tensor([T, T - 9, T, T - 3]) if padded else torch.full((4,), T)
    padding = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1) if padded else None
    mask = compute_span_mask(lengths, T, 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, T, 8)
    kept, positions, kept_padding = _keep_unmasked(x, mask, padding)  # reads K from the data
    kept_h, positions_h, kept_padding_h = _keep_unmasked(x, mask, padding, T - T // 2)
    assert torch.equal(kept, kept_h) and torch.equal(positions, positions_h)
    if padded:
        assert kept_padding is not None and kept_padding_h is not None
        assert torch.equal(kept_padding, kept_padding_h)
    else:
        assert kept_padding is None and kept_padding_h is None


def test_masked_context_with_num_kept_equals_the_reading_path() -> None:
    context = tiny_context().eval()
    T = 30
    lengths = torch.tensor([30, 22, 30])
    padding = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)
    mask = compute_span_mask(lengths, T, 0.5, generator=torch.Generator().manual_seed(1))
    features = torch.randn(3, T, 64).masked_fill(padding.unsqueeze(-1), 0.0)
    with torch.no_grad():
        a = context(features, padding, mask=mask)
        b = context(features, padding, mask=mask, num_kept=T - T // 2)
    valid = ~a.padding_mask if a.padding_mask is not None else torch.ones_like(a.positions).bool()
    assert (a.frames - b.frames)[valid].abs().max() <= 1e-6
    assert (a.tokens - b.tokens).abs().max() <= 1e-6


def test_shared_bias_broadcasts_like_the_per_row_bias() -> None:
    slopes = torch.tensor([0.5, 0.25])
    scale = torch.tensor([1.0, 0.3])
    shared = attention_bias(torch.arange(6).unsqueeze(0), None, slopes, scale, 2)
    per_row = attention_bias(torch.arange(6).expand(3, 6), None, slopes, scale, 2)
    assert shared.shape == (1, 2, 8, 8) and per_row.shape == (3, 2, 8, 8)
    assert torch.equal(shared.expand(3, -1, -1, -1), per_row)
    half = attention_bias(torch.arange(6).unsqueeze(0), None, slopes, scale, 2, torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_bias_is_built_in_the_autocast_dtype() -> None:
    x = torch.randn(2, 3)
    assert _compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _compute_dtype(x) == torch.bfloat16


def test_activation_checkpointing_same_outputs_and_gradients() -> None:
    features = torch.randn(2, 25, 64)
    results = []
    for checkpointing in (False, True):
        context = tiny_context(layerdrop=0.0, prenet_layerdrop=0.0).train()  # dropout stays on
        context.activation_checkpointing = checkpointing
        torch.manual_seed(5)  # the same dropout masks
        out = context(features, None)
        out.x.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in context.named_parameters() if p.grad is not None}
        results.append((out.x.detach(), grads))
    (x0, g0), (x1, g1) = results
    assert torch.equal(x0, x1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert (g0[name] - g1[name]).abs().max() <= 1e-6, name


def _tiny_system(**options: bool) -> PretrainSystem:
    from emotion_ssl.train.pretrain import PretrainSystem

    torch.manual_seed(0)
    return PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
        **options,
    )


@pytest.mark.slow  # inductor compiles ~20 graphs: ~15 s with its on-disk cache, ~60 s without
def test_compile_option_runs_compiled_code_that_matches_eager() -> None:
    """`compile=True`: same weights and keys, and the compiled student, teacher and decoder,
    actually run, give the eager outputs."""
    import torch._dynamo

    eager, compiled = _tiny_system().eval(), _tiny_system(compile=True).eval()
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    for name, value in eager.state_dict().items():
        assert torch.equal(value, compiled.state_dict()[name]), name
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    waves = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1  # (B, S)
    lengths = torch.tensor([4000, 3000])  # one padded row
    outputs = []
    with torch.no_grad():
        for system in (eager, compiled):
            student = system.student(waves, lengths)
            features, padding_mask, _ = system.student.local_features(waves, lengths)
            teacher = system.teacher.encoder(features, padding_mask)
            decoded = system.decoder(student.frames, student.padding_mask)
            outputs.append((student.frames, student.tokens, teacher.x, decoded))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 4, dict(torch._dynamo.utils.counters["stats"])  # compiled code ran
    for want, got in zip(*outputs, strict=True):
        assert (want - got).abs().max() <= 1e-4


def test_activation_checkpointing_option_reaches_the_student_only() -> None:
    checkpointed = _tiny_system(activation_checkpointing=True)
    assert checkpointed.student.context.activation_checkpointing
    assert not checkpointed.teacher.encoder.activation_checkpointing


def test_lengths_stay_on_the_host_after_transfer() -> None:
    from emotion_ssl.data.batch import AudioBatch
    from emotion_ssl.train.pretrain import PretrainSystem

    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
    )
    batch = AudioBatch(
        waveforms=torch.zeros(2, 800),
        lengths=torch.tensor([800, 600]),
        labels=torch.tensor([-1, -1]),
        keys=["a", "b"],
    )
    # a device that really differs from the host (on CPU, .to("cpu") returns the same object)
    moved = system.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.waveforms.device.type == "meta" and moved.labels.device.type == "meta"
    assert moved.lengths is batch.lengths and moved.lengths.device.type == "cpu"


def test_encoder_output_unchanged_by_unpadded_lengths() -> None:
    """Lengths equal to the width: the no-padding path (shared bias) and None agree."""
    torch.manual_seed(0)
    encoder = EmotionEncoder(EncoderConfig.tiny()).eval()
    waves = torch.randn(2, 4000) * 0.1
    with torch.no_grad():
        a = encoder(waves)
        b = encoder(waves, torch.tensor([4000, 4000]))
    assert torch.equal(a.frames, b.frames)
    assert not b.padding_mask.any()


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("32-true", 1.0, True), ("bf16-mixed", None, True), ("bf16-mixed", 1.0, False)],
)
def test_fused_adamw_unless_clipping_under_mixed_precision(
    precision: str, clip: float | None, fused: bool
) -> None:
    """Lightning refuses gradient clipping with a fused optimizer under mixed precision."""
    import lightning as L

    from emotion_ssl.train.pretrain import PretrainSystem

    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
    )
    system.trainer = L.Trainer(
        max_steps=5,
        precision=precision,
        gradient_clip_val=clip,
        logger=False,  # type: ignore[arg-type]
    )
    optimizer = system.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is fused
