"""Measured differences to the reference on the golden tiny checkpoint: the forward pass and
one training step (targets, decoder, losses, gradients) for the three utterance variants.

    .venv/bin/python benchmarks/golden_parity.py [--shared ../shared]

Prints the differences that README.md, docs/interop.md and docs/architecture.md quote; the tests
assert the tolerances.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from emotion_ssl.export import load_encoder
from emotion_ssl.models.feature_extractor import normalize_waveform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    golden = Path(parser.parse_args().shared) / "golden" / "emotion2vec_tiny"
    if not golden.is_dir():
        raise SystemExit(f"{golden} not found (the golden files live in ../shared)")
    torch.set_num_threads(2)
    encoder = load_encoder(golden / "checkpoint.pt")
    inputs = torch.load(golden / "inputs.pt")
    expected = torch.load(golden / "expected.pt")
    worst: dict[str, float] = {}

    def record(name: str, diff: torch.Tensor) -> None:
        worst[name] = max(worst.get(name, 0.0), float(diff.abs().max()))

    lengths = torch.tensor(inputs["lengths"])
    batch = torch.zeros(len(lengths), int(lengths.max()))
    with torch.no_grad():
        for i, (wave, ref) in enumerate(zip(inputs["waveforms"], expected["single"], strict=True)):
            batch[i, : wave.numel()] = wave
            out = encoder(wave.unsqueeze(0), return_layers=True)
            assert out.layer_results is not None
            shared = torch.stack([f[0] for f in out.layer_results[encoder.config.prenet_depth :]])
            source = normalize_waveform(wave.unsqueeze(0), torch.tensor([wave.numel()]))[0]
            record("frames x", out.frames[0] - ref["x"])
            record("utterance mean x_mean", out.utterance[0] - ref["x_mean"])
            record("utterance tokens", out.tokens[0] - ref["extra_tokens_out"])
            record("layer_results (shared blocks)", shared - ref["layer_results"][:, 10:])
            record("normalised waveform", source - ref["source"])
        out = encoder(batch, lengths)
        for i, ref in enumerate(expected["single"]):
            T = ref["num_frames"]
            record("padded batch vs one-at-a-time x", out.frames[i, :T] - ref["x"])
    reference_leak = max(row["x_max_abs_diff"] for row in expected["batched_vs_single"])
    print("| output | max abs diff |")
    print("|---|---|")
    for name, value in worst.items():
        print(f"| {name} | {value:.2g} |")
    print(f"| (the reference's own padded batch vs one-at-a-time) | {reference_leak:.2g} |")
    print()
    training_step(golden.parent)


def training_step(golden: Path) -> None:
    """One pretraining step in code_faithful mode vs the reference's recorded step."""
    from emotion_ssl.export.fairseq import map_fairseq_key
    from emotion_ssl.train.parity import reference_step_system

    checkpoint = golden / "emotion2vec_tiny" / "checkpoint.pt"
    step_dir = golden / "emotion2vec_tiny_train"
    step = torch.load(step_dir / "step.pt")
    print(
        "| variant | y | decoder_out | frame loss (rel) | utterance loss (rel) | worst gradient (rel) |"
    )
    print("|---|---|---|---|---|---|")
    for variant, name in (
        ("chunk", "step.pt"),
        ("token", "step_cls_single.pt"),
        ("global", "step_cls_global.pt"),
    ):
        ref = torch.load(step_dir / name)
        system = reference_step_system(checkpoint, variant)  # type: ignore[arg-type]
        out = system.forward_step(step["source"], None, torch.full((3,), -1), mask=step["mask"])
        out.losses.total.backward()
        norm = ref["normalised"]
        frame_rel = abs(out.losses.frame.item() / norm["AUDIO_regression_over_sample_size"] - 1)
        utt_rel = abs(out.losses.utterance.item() / norm["cls_over_sample_size"] - 1)
        worst_grad = 0.0
        for key, g_ref in ref["grads_of_summed_loss"].items():
            side, ours = map_fairseq_key(key)  # type: ignore[misc]
            owner = system.student if side == "encoder" else system.decoder
            grad = dict(owner.named_parameters())[ours].grad
            assert grad is not None
            worst_grad = max(
                worst_grad, float((grad * step["sample_size"] - g_ref).norm() / g_ref.norm())
            )
        print(
            f"| {variant} | {float((out.frame_target - step['y']).abs().max()):.2g} "
            f"| {float((out.prediction.detach() - step['decoder_out']).abs().max()):.2g} "
            f"| {frame_rel:.2g} | {utt_rel:.2g} | {worst_grad:.2g} |"
        )


if __name__ == "__main__":
    main()
