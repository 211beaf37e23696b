"""The category term's options inside PretrainSystem: pass-through, teacher-side prototypes
from the real teacher's tokens, and the logged counts."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from emotion_ssl.data.batch import AudioBatch
from emotion_ssl.losses import ObjectiveSettings, centred_unit
from emotion_ssl.models.config import EncoderSettings
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.train.optim import OptimSettings
from emotion_ssl.train.pretrain import PretrainSystem

torch.set_num_threads(1)


def _system(**objective: Any) -> PretrainSystem:
    """The tiny encoder, 2 clones, the category term on; `objective` adds ObjectiveSettings."""
    torch.manual_seed(0)
    return PretrainSystem(
        encoder=EncoderSettings("tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(
            top_k=2, category_weight=1.0, category_ramp_steps=0, num_classes=2, **objective
        ),
        optim=OptimSettings(warmup_steps=1),
    )


def _batch(labels: list[int]) -> AudioBatch:
    g = torch.Generator().manual_seed(len(labels))
    lengths = torch.tensor([8000 + 800 * i for i in range(len(labels))])
    waves = torch.randn(len(labels), int(lengths.max()), generator=g) * 0.1
    for i, n in enumerate(lengths.tolist()):
        waves[i, n:] = 0.0
    return AudioBatch(waves, lengths, torch.tensor(labels), [str(i) for i in labels])


def test_options_reach_the_objective_and_prototypes_come_from_the_teacher() -> None:
    system = _system(
        category_clone_positives=False,
        category_memory_size=16,
        pseudo_labels=True,
        pseudo_label_warmup_steps=0,
    )
    objective = system.objective
    assert objective.settings.category_clone_positives is False
    assert objective.memory is not None and objective.memory.size == 16
    assert objective.prototypes is not None and objective.head is not None
    teacher_tokens: list[torch.Tensor] = []
    system.teacher.register_forward_hook(lambda m, i, o: teacher_tokens.append(o.tokens))
    batch = _batch([0, 1, -1])
    system.train()
    system.forward_step(batch.waveforms, batch.lengths, batch.labels, None, torch.Generator())
    with torch.no_grad():  # (B, E, D) teacher tokens -> the head -> batch-centred units
        expected = centred_unit(objective.head.project(teacher_tokens[0].mean(dim=1)))
    torch.testing.assert_close(objective.prototypes.prototypes, expected[:2])
    assert objective.memory.valid.sum().item() == 6  # 3 clips x 2 clones


class _Labelled(torch.utils.data.Dataset[AudioBatch]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> AudioBatch:
        return _batch([0, 0, 1, -1] if i == 0 else [-1, -1, -1, -1])


def test_training_logs_cross_utterance_positives_and_skips() -> None:
    system = _system()
    seen: list[dict[str, float]] = []

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            metrics = trainer.callback_metrics
            keys = ("train/cross_utterance_positives", "train/category_skipped")
            seen.append({k: float(metrics[k]) for k in keys})

    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Capture()],
    )
    loader = DataLoader(_Labelled(), batch_size=None)
    trainer.fit(system, loader)
    # step 1: clips 0 and 1 share class 0 -> each of their 4 clones has the 2 clones of the
    # other clip as cross-utterance positives (8 pairs); class 1 has its own clones only
    assert seen[0] == {"train/cross_utterance_positives": 8.0, "train/category_skipped": 0.0}
    # step 2: nothing labelled -> skipped with reason 1
    assert seen[1] == {"train/cross_utterance_positives": 0.0, "train/category_skipped": 1.0}
