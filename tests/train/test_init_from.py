"""Continue pretraining from pretrained weights (`--model.init_from`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fairseq_files import tiny_data2vec2_file, tiny_fairseq_file

from emotion_ssl.export.fairseq import AUDIO_PREFIX
from emotion_ssl.export.frozen import StateDictMismatchError
from emotion_ssl.losses import ObjectiveSettings
from emotion_ssl.models import EncoderConfig
from emotion_ssl.models.config import EncoderSettings
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.train.optim import OptimSettings
from emotion_ssl.train.pretrain import PretrainSystem


def test_student_decoder_and_teacher_from_a_fairseq_checkpoint(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "e2v.pt", teacher_shift=0.5)
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"), objective=ObjectiveSettings(top_k=2)
    )
    report = system.load_pretrained(str(path))
    assert report == {
        "student": "loaded",
        "decoder": "loaded",
        "teacher": "loaded from the source's teacher (_ema)",
    }
    for k, v in encoder.state_dict().items():
        assert torch.equal(system.student.state_dict()[k], v), k
    for k, v in encoder.context.state_dict().items():
        assert torch.allclose(system.teacher.encoder.state_dict()[k], v + 0.5), k


def test_teacher_copies_the_student_without_ema(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "e2v.pt")
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"), objective=ObjectiveSettings(top_k=2)
    )
    assert system.load_pretrained(str(path))["teacher"] == "copied from the student"
    for k, v in encoder.context.state_dict().items():
        assert torch.equal(system.teacher.encoder.state_dict()[k], v), k


def test_data2vec_checkpoint_gets_fresh_utterance_tokens(tmp_path: Path) -> None:
    """emotion2vec was continued from data2vec 2.0 base, which has no utterance tokens."""
    d2v = replace(EncoderConfig.tiny(), num_utterance_tokens=0)
    path, encoder = tiny_fairseq_file(tmp_path / "d2v.pt", d2v, teacher_shift=0.1)
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"), objective=ObjectiveSettings(top_k=2)
    )
    fresh = system.student.context.utterance_tokens.detach().clone()
    report = system.load_pretrained(str(path))
    assert report["utterance_tokens"] == "fresh (the source has none)"
    assert torch.equal(system.student.context.utterance_tokens, fresh)
    assert torch.equal(system.teacher.encoder.utterance_tokens, fresh)
    assert torch.equal(
        system.student.context.blocks[0].attn.qkv.weight, encoder.context.blocks[0].attn.qkv.weight
    )


def test_architecture_mismatch_is_an_error(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "e2v.pt")
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny", overrides={"depth": 3}),
        objective=ObjectiveSettings(top_k=2),
    )
    with pytest.raises(ValueError, match=r"architecture differs .*depth: 3 vs 2"):
        system.load_pretrained(str(path))


def test_training_settings_may_differ(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "e2v.pt")
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny", overrides={"dropout": 0.0, "layerdrop": 0.0}),
        objective=ObjectiveSettings(top_k=2),
    )
    assert system.load_pretrained(str(path))["student"] == "loaded"


def test_init_from_applies_when_fit_starts_not_when_resuming(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from emotion_ssl.data.batch import AudioBatch

    path, encoder = tiny_fairseq_file(tmp_path / "e2v.pt")
    waves = torch.randn(4, 12000, generator=torch.Generator().manual_seed(0)) * 0.1

    def batches() -> DataLoader:
        return DataLoader(
            [waves[i] for i in range(4)],
            batch_size=2,
            collate_fn=lambda w: AudioBatch(
                torch.stack(w),
                torch.tensor([12000] * len(w)),
                torch.full((len(w),), -1),
                ["a"] * len(w),
            ),
        )

    def trainer(steps: int) -> L.Trainer:
        return L.Trainer(
            max_steps=steps, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
        )

    def from_init() -> PretrainSystem:  # lr 0: an update leaves the imported weights
        return PretrainSystem(
            encoder=EncoderSettings(preset="tiny"),
            masking=MaskingSettings(num_clones=2),
            objective=ObjectiveSettings(top_k=2),
            optim=OptimSettings(lr=0.0),
            init_from=str(path),
        )

    system = from_init()
    first = trainer(1)
    first.fit(system, batches())
    # lr 0: the student still holds exactly the imported weights after one update
    for k, v in encoder.state_dict().items():
        assert torch.equal(system.student.state_dict()[k], v), k
    ckpt = tmp_path / "one.ckpt"
    first.save_checkpoint(ckpt)
    path.unlink()  # resuming must not need the init_from file any more
    resumed = from_init()
    trainer(2).fit(resumed, batches(), ckpt_path=ckpt)
    assert torch.equal(
        resumed.student.context.blocks[0].attn.qkv.weight, encoder.context.blocks[0].attn.qkv.weight
    )


# ------------------------------------------- data2vec 2.0 base layout (0 prenet + N shared)
def test_data2vec2_layout_maps_blocks_into_prenet_and_shared(tmp_path: Path) -> None:
    """data2vec 2.0's blocks.0..1 -> prenet 0..1 and blocks.2..3 -> shared 0..1 here (base:
    blocks.0..3 -> prenet, 4..11 -> shared); teacher from `_ema`, utterance tokens fresh."""
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", depth=4, teacher_shift=0.25)
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny", overrides={"prenet_depth": 2}),
        objective=ObjectiveSettings(top_k=2),
    )
    fresh = system.student.context.utterance_tokens.detach().clone()
    report = system.load_pretrained(str(path))
    assert report == {
        "student": "loaded",
        "blocks": "source blocks 0..1 -> prenet 0..1, source blocks 2..3 -> shared 0..1 "
        "(the source has 0 prenet + 4 shared blocks)",
        "utterance_tokens": "fresh (the source has none)",
        "decoder": "loaded",
        "teacher": "loaded from the source's teacher (_ema)",
    }
    student, teacher = system.student.context, system.teacher.encoder
    ema = file["_ema"]
    for source, ours in [(0, student.prenet[0]), (1, student.prenet[1])] + [
        (2, student.blocks[0]),
        (3, student.blocks[1]),
    ]:
        for key, value in ours.state_dict().items():
            assert torch.equal(value, file[f"blocks.{source}.{key}"]), (source, key)
    for source, ours in [(0, teacher.prenet[0]), (1, teacher.prenet[1])] + [
        (2, teacher.blocks[0]),
        (3, teacher.blocks[1]),
    ]:
        for key, value in ours.state_dict().items():
            assert torch.equal(value, ema[f"blocks.{source}.{key}"]), (source, key)
    A = AUDIO_PREFIX
    assert torch.equal(student.prenet_norm.weight, file[f"{A}context_encoder.norm.weight"])
    assert torch.equal(teacher.prenet_norm.bias, ema[f"{A}context_encoder.norm.bias"])
    assert torch.equal(
        teacher.pos_conv.layers[4].weight, ema[f"{A}relative_positional_encoder.5.0.weight"]
    )
    assert torch.equal(system.decoder.proj.weight, file[f"{A}decoder.proj.weight"])
    assert torch.equal(student.utterance_tokens, fresh)
    assert torch.equal(teacher.utterance_tokens, fresh)


def test_data2vec2_teacher_of_shared_blocks_only(tmp_path: Path) -> None:
    """`ema_encoder_only`: `_ema` holds the blocks alone; they are renumbered like the
    student's, everything else of the teacher comes from the student."""
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", teacher_shift=0.25, ema_encoder_only=True)
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"), objective=ObjectiveSettings(top_k=2)
    )  # 1 prenet + 2 shared from 3 blocks
    system.load_pretrained(str(path))
    teacher = system.teacher.encoder
    assert torch.equal(teacher.prenet[0].mlp.fc1.weight, file["_ema"]["0.mlp.fc1.weight"])
    assert torch.equal(teacher.blocks[1].norm2.bias, file["_ema"]["2.norm2.bias"])
    assert torch.equal(teacher.prenet_norm.weight, system.student.context.prenet_norm.weight)


def test_data2vec2_missing_block_key_is_named_in_the_files_numbering(tmp_path: Path) -> None:
    path, _ = tiny_data2vec2_file(tmp_path / "d2v.pt", drop=("blocks.0.attn.qkv.bias",))
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"), objective=ObjectiveSettings(top_k=2)
    )
    with pytest.raises(
        StateDictMismatchError, match=r"missing keys \['context.blocks.0.attn.qkv.bias'\]"
    ):
        system.load_pretrained(str(path))


def test_data2vec2_init_from_starts_training(tmp_path: Path) -> None:
    """`PretrainSystem(encoder=EncoderSettings("tiny"), init_from=<data2vec 2.0 layout file>)` trains; with lr 0
    the student keeps the file's weights and the teacher moves from `_ema` by exactly one EMA
    step towards them."""
    import lightning as L
    from torch.utils.data import DataLoader

    from emotion_ssl.data.batch import AudioBatch

    torch.set_num_threads(1)
    path, file = tiny_data2vec2_file(tmp_path / "d2v.pt", teacher_shift=0.25)
    waves = torch.randn(2, 12000, generator=torch.Generator().manual_seed(0)) * 0.1
    batches = DataLoader(
        [waves[0], waves[1]],
        batch_size=2,
        collate_fn=lambda w: AudioBatch(
            torch.stack(w), torch.tensor([12000] * len(w)), torch.full((len(w),), -1), ["a", "b"]
        ),
    )
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
        optim=OptimSettings(lr=0.0),
        init_from=str(path),
    )
    L.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(system, batches)
    assert system.global_step == 1
    tau = system.teacher.decay(1)
    pairs = [(system.student.context.prenet[0], system.teacher.encoder.prenet[0], 0)] + [
        (system.student.context.blocks[i], system.teacher.encoder.blocks[i], i + 1)
        for i in range(2)
    ]
    for student, teacher, source in pairs:
        for key, value in student.state_dict().items():
            assert torch.equal(value, file[f"blocks.{source}.{key}"]), (source, key)
            start = file["_ema"][f"blocks.{source}.{key}"]
            torch.testing.assert_close(
                teacher.state_dict()[key], start.lerp(value, 1.0 - tau), rtol=0, atol=1e-7
            )
            assert not torch.equal(teacher.state_dict()[key], start)
