"""Continue pretraining from pretrained weights (`--model.init_from`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fairseq_files import tiny_fairseq_file

from emotion_ssl.models import EncoderConfig
from emotion_ssl.train.pretrain import PretrainSystem


def test_student_decoder_and_teacher_from_a_fairseq_checkpoint(tmp_path: Path) -> None:
    path, encoder = tiny_fairseq_file(tmp_path / "e2v.pt", teacher_shift=0.5)
    system = PretrainSystem(preset="tiny", top_k=2)
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
    system = PretrainSystem(preset="tiny", top_k=2)
    assert system.load_pretrained(str(path))["teacher"] == "copied from the student"
    for k, v in encoder.context.state_dict().items():
        assert torch.equal(system.teacher.encoder.state_dict()[k], v), k


def test_data2vec_checkpoint_gets_fresh_utterance_tokens(tmp_path: Path) -> None:
    """emotion2vec was continued from data2vec 2.0 base, which has no utterance tokens."""
    d2v = replace(EncoderConfig.tiny(), num_utterance_tokens=0)
    path, encoder = tiny_fairseq_file(tmp_path / "d2v.pt", d2v, teacher_shift=0.1)
    system = PretrainSystem(preset="tiny", top_k=2)
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
    system = PretrainSystem(preset="tiny", encoder_overrides={"depth": 3}, top_k=2)
    with pytest.raises(ValueError, match=r"architecture differs .*depth: 3 vs 2"):
        system.load_pretrained(str(path))


def test_training_settings_may_differ(tmp_path: Path) -> None:
    path, _ = tiny_fairseq_file(tmp_path / "e2v.pt")
    system = PretrainSystem(
        preset="tiny", encoder_overrides={"dropout": 0.0, "layerdrop": 0.0}, top_k=2
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

    system = PretrainSystem(preset="tiny", top_k=2, num_clones=2, init_from=str(path), lr=0.0)
    first = trainer(1)
    first.fit(system, batches())
    # lr 0: the student still holds exactly the imported weights after one update
    for k, v in encoder.state_dict().items():
        assert torch.equal(system.student.state_dict()[k], v), k
    ckpt = tmp_path / "one.ckpt"
    first.save_checkpoint(ckpt)
    path.unlink()  # resuming must not need the init_from file any more
    resumed = PretrainSystem(preset="tiny", top_k=2, num_clones=2, init_from=str(path), lr=0.0)
    trainer(2).fit(resumed, batches(), ckpt_path=ckpt)
    assert torch.equal(
        resumed.student.context.blocks[0].attn.qkv.weight, encoder.context.blocks[0].attn.qkv.weight
    )
