"""Reproducing one step of the reference's training code (emotion2vec fairseq fork).

The reference records its golden step deterministically: dropout, layerdrop and mask noise
off, an already-normalised batch, clone batch 2, top-2 targets, the released
("code_faithful") utterance target and reduction, and a teacher equal to the student.
`reference_step_system` builds a `PretrainSystem` set up the same way from a checkpoint;
run `system.forward_step(source, None, labels, mask=reference_mask)` to compare.
"""

from __future__ import annotations

from pathlib import Path

from emotion_ssl.losses import ObjectiveSettings
from emotion_ssl.losses.targets import UtteranceMode
from emotion_ssl.losses.utterance import UtteranceVariant
from emotion_ssl.models.config import EncoderSettings, Preset
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.train.pretrain import PretrainSystem

DETERMINISTIC = {
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "post_mlp_dropout": 0.0,
    "layerdrop": 0.0,
    "prenet_layerdrop": 0.0,
    "decoder_input_dropout": 0.0,
    "mask_noise_std": 0.0,
    "normalize_waveform": False,  # the reference's batch is normalised before cropping
}
"""EncoderConfig overrides of the golden step: no randomness, no re-normalisation."""


def reference_step_system(
    checkpoint: str | Path,
    variant: UtteranceVariant = "chunk",
    mode: UtteranceMode = "code_faithful",
    num_clones: int = 2,
    top_k: int = 2,
    preset: Preset = "tiny",
) -> PretrainSystem:
    """A PretrainSystem with the golden step's settings, its student and decoder loaded from
    `checkpoint` (fairseq or ours) and its teacher equal to the student, in train mode."""
    system = PretrainSystem(
        encoder=EncoderSettings(preset, DETERMINISTIC),
        masking=MaskingSettings(num_clones=num_clones),
        objective=ObjectiveSettings(top_k=top_k, utterance_variant=variant, utterance_mode=mode),
    )
    report = system.load_pretrained(str(checkpoint))
    if report["decoder"] != "loaded":
        raise ValueError(f"{checkpoint}: a reference step needs the decoder's weights")
    system.teacher.copy_from(system.student.context)  # the golden teacher equals the student
    return system.train()
