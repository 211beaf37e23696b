"""One pretraining step equals the reference's (../shared/golden/emotion2vec_tiny_train)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emotion_ssl.export.fairseq import map_fairseq_key
from emotion_ssl.train.parity import reference_step_system
from emotion_ssl.train.pretrain import PretrainSystem

VARIANTS = [("chunk", "step.pt"), ("token", "step_cls_single.pt"), ("global", "step_cls_global.pt")]


def golden_system(golden_dir: Path, variant: str, mode: str = "code_faithful") -> PretrainSystem:
    return reference_step_system(
        golden_dir / "emotion2vec_tiny" / "checkpoint.pt",
        variant,  # type: ignore[arg-type]
        mode,  # type: ignore[arg-type]
    )


def our_param(system: PretrainSystem, fairseq_key: str) -> torch.nn.Parameter:
    mapped = map_fairseq_key(fairseq_key)
    assert mapped is not None, fairseq_key
    owner = system.student if mapped[0] == "encoder" else system.decoder
    return dict(owner.named_parameters())[mapped[1]]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture
def step_dir(golden_dir: Path) -> Path:
    return golden_dir / "emotion2vec_tiny_train"


@pytest.mark.parametrize(("variant", "filename"), VARIANTS)
def test_step_matches_reference(
    golden_dir: Path, step_dir: Path, variant: str, filename: str
) -> None:
    step = torch.load(step_dir / "step.pt")
    golden = torch.load(step_dir / filename)
    system = golden_system(golden_dir, variant)
    out = system.forward_step(step["source"], None, torch.full((3,), -1), mask=step["mask"])

    # teacher targets, decoder and student outputs (time order), |diff| <= 1e-4
    assert (out.frame_target - step["y"]).abs().max() <= 1e-4
    for layer, ref in zip(out.teacher_layers, step["teacher_layer_results_raw"], strict=True):
        assert (layer - ref).abs().max() <= 1e-4
    assert (out.decoder_input - step["decoder_in"]).abs().max() <= 1e-4
    assert (out.prediction - step["decoder_out"]).abs().max() <= 1e-4
    assert (out.tokens - step["utt_token_out"]).abs().max() <= 1e-4
    assert torch.equal(out.kept_positions, step["kept_frames_time_order"])
    assert (out.kept_frames - step["student_frames_time_order"]).abs().max() <= 1e-4
    losses = out.losses
    assert (losses.utterance_prediction - golden["cls_pred"]).abs().max() <= 1e-5
    assert losses.utterance_target.abs().max() <= 1e-5  # the released target is zero
    assert int(losses.num_masked) == step["sample_size"] == 144

    # the reference's normalised losses (summed loss / sample size)
    normalised = golden["normalised"]
    assert losses.frame.item() == pytest.approx(
        normalised["AUDIO_regression_over_sample_size"], rel=1e-5
    )
    assert losses.utterance.item() == pytest.approx(normalised["cls_over_sample_size"], rel=1e-5)
    assert losses.total.item() == pytest.approx(normalised["total_over_sample_size"], rel=1e-5)

    # gradients: the reference records those of the summed loss = ours x sample size
    losses.total.backward()
    for key, ref in golden["grads_of_summed_loss"].items():
        grad = our_param(system, key).grad
        assert grad is not None, key
        assert rel(grad * step["sample_size"], ref) <= 1e-4, key
    for key, ref_norm in golden["grad_norms_of_summed_loss"].items():
        grad = our_param(system, key).grad
        norm = 0.0 if grad is None else float(grad.norm()) * step["sample_size"]
        assert norm == pytest.approx(float(ref_norm), rel=1e-4, abs=1e-6), key
    assert all(p.grad is None for p in system.teacher.parameters())


def test_default_mode_differs_only_in_the_utterance_term(golden_dir: Path, step_dir: Path) -> None:
    """The project default changes the utterance target and its reduction, nothing else."""
    step = torch.load(step_dir / "step.pt")
    default = golden_system(golden_dir, "chunk", mode="layer_norm")
    out = default.forward_step(step["source"], None, torch.full((3,), -1), mask=step["mask"])
    ref = step["normalised"]
    assert out.losses.frame.item() == pytest.approx(
        ref["AUDIO_regression_over_sample_size"], rel=1e-5
    )
    assert (out.losses.utterance_prediction - step["cls_pred"]).abs().max() <= 1e-5
    assert out.losses.utterance_target.abs().max() > 0.1  # a real target, not zero
    # and it is a mean over clones, not a sum: R = 6 rows
    per_row = (out.losses.utterance_prediction - out.losses.utterance_target).pow(2).sum(-1) / 8.0
    assert out.losses.utterance.item() == pytest.approx(float(per_row.mean()), rel=1e-6)
    faithful = golden_system(golden_dir, "chunk", mode="code_faithful")
    out_f = faithful.forward_step(step["source"], None, torch.full((3,), -1), mask=step["mask"])
    assert out_f.losses.utterance.item() == pytest.approx(ref["cls_over_sample_size"], rel=1e-5)
    # everything but the utterance term is identical: targets, decoder, frame loss, and the
    # decoder's gradients (the utterance term does not reach the decoder)
    assert torch.equal(out.frame_target, out_f.frame_target)
    assert torch.equal(out.prediction, out_f.prediction)
    assert torch.equal(out.losses.frame, out_f.losses.frame)
    out.losses.total.backward()
    out_f.losses.total.backward()
    for (name, p), (_, q) in zip(
        default.decoder.named_parameters(), faithful.decoder.named_parameters(), strict=True
    ):
        assert p.grad is not None and q.grad is not None
        assert torch.equal(p.grad, q.grad), name
