"""The pretraining system: what the student encodes, the teacher's isolation, EMA cadence,
non-finite handling and atomic checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from emotion_ssl.data.batch import AudioBatch
from emotion_ssl.losses import CollapseGuard, NonFiniteGuard, NonFiniteLossError, ObjectiveSettings
from emotion_ssl.models.config import EncoderSettings
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.models.teacher import TeacherSettings
from emotion_ssl.train.checkpoint import atomic_torch_save
from emotion_ssl.train.optim import OptimSettings
from emotion_ssl.train.pretrain import PretrainSystem


def tiny_system(**settings: Any) -> PretrainSystem:
    """The tiny encoder, 4 clones, top-2 targets, 1 warm-up update; `settings` replace groups."""
    torch.manual_seed(0)
    return PretrainSystem(
        **{
            "encoder": EncoderSettings("tiny"),
            "masking": MaskingSettings(num_clones=4),
            "objective": ObjectiveSettings(top_k=2),
            "optim": OptimSettings(warmup_steps=1),
            **settings,
        }
    )


def test_student_transformer_sees_only_unmasked_frames() -> None:
    # no layerdrop, so the hooked block always runs
    system = tiny_system(
        encoder=EncoderSettings("tiny", {"layerdrop": 0.0, "prenet_layerdrop": 0.0})
    )
    seen: list[tuple[int, ...]] = []
    for context in (system.student.context, system.teacher.encoder):
        context.prenet[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    waves = torch.randn(3, 16000) * 0.1  # equal lengths: no padding, every row keeps K frames
    out = system.forward_step(
        waves, None, torch.full((3,), -1), generator=torch.Generator().manual_seed(0)
    )
    R, T = out.mask.shape
    assert (R, T) == (12, 49)
    assert out.mask.sum(dim=1).tolist() == [24] * R  # floor(0.5 * 49) per clone
    # the hook fires for the student (R rows) and the teacher (3 unmasked rows, T frames)
    student_shape = next(s for s in seen if s[0] == R)
    teacher_shape = next(s for s in seen if s[0] == 3)
    E = 10
    assert student_shape[1] - E == T - 24
    assert R * (student_shape[1] - E) == int((~out.mask).sum()) == out.num_encoded_frames
    assert teacher_shape[1] - E == T


def test_padded_rows_mask_only_valid_frames() -> None:
    system = tiny_system()
    lengths = torch.tensor([16000, 8000])
    waves = torch.randn(2, 16000) * 0.1
    out = system.forward_step(
        waves, lengths, torch.full((2,), -1), generator=torch.Generator().manual_seed(1)
    )
    frames = system.student.frame_lengths(lengths).repeat_interleave(4)  # 49, 24
    for row, T in enumerate(frames.tolist()):
        assert int(out.mask[row].sum()) == T // 2
        assert not out.mask[row, T:].any()
    assert out.num_encoded_frames == int((frames - frames // 2).sum())


def test_teacher_untouched_by_backward_and_absent_from_optimizer() -> None:
    system = tiny_system()
    before = {k: v.clone() for k, v in system.teacher.state_dict().items()}
    out = system.forward_step(torch.randn(2, 12000) * 0.1, None, torch.full((2,), -1))
    out.losses.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in system.teacher.parameters())
    for k, v in system.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    system.trainer = trainer
    optimizer = system.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in system.teacher.parameters()}
    student_side = [*system.student.parameters(), *system.decoder.parameters()]
    assert {id(p) for p in student_side} <= optimised


class _Clips(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.waves = [torch.randn(8000 + 800 * i, generator=g) * 0.1 for i in range(n)]

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.waves[i]


def _collate(waves: list[torch.Tensor]) -> AudioBatch:
    lengths = torch.tensor([w.numel() for w in waves])
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, : w.numel()] = w
    return AudioBatch(
        waveforms=out,
        lengths=lengths,
        labels=torch.full((len(waves),), -1),
        keys=[str(i) for i in range(len(waves))],
    )


def test_one_ema_step_per_optimizer_update_with_accumulation(tmp_path: Path) -> None:
    system = tiny_system(teacher=TeacherSettings(decay_start=0.9, decay_end=0.9))
    calls: list[int] = []
    original = system.teacher.update

    def counting_update(student, step):  # type: ignore[no-untyped-def]
        calls.append(step)
        return original(student, step)

    system.teacher.update = counting_update  # type: ignore[method-assign]
    trainer = L.Trainer(
        max_steps=3,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(system, DataLoader(_Clips(8), batch_size=2, collate_fn=_collate))
    assert trainer.global_step == 3
    assert calls == [1, 2, 3]  # 6 micro-batches, 3 updates, 3 EMA steps
    assert not system.teacher.training


def test_nonfinite_loss_skips_then_stops() -> None:
    system = tiny_system(nonfinite=NonFiniteGuard(max_in_row=3))
    bad = AudioBatch(
        waveforms=torch.full((2, 8000), float("nan")),
        lengths=torch.tensor([8000, 8000]),
        labels=torch.tensor([-1, -1]),
        keys=["a", "b"],
    )
    assert system.training_step(bad, 0) is None
    assert system.training_step(bad, 1) is None
    assert system.nonfinite_skipped == 2
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        system.training_step(bad, 2)


def test_atomic_save_keeps_the_last_good_file_on_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def crash(obj, f):  # type: ignore[no-untyped-def]
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_bf16_mixed_steps_keep_an_fp32_teacher(tmp_path: Path) -> None:
    system = tiny_system()
    trainer = L.Trainer(
        max_steps=2,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(system, DataLoader(_Clips(4), batch_size=2, collate_fn=_collate))
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in system.teacher.parameters())


class _NaNAt(_Clips):
    """Clips whose batch `bad` (batch size 2) is all NaN."""

    def __init__(self, n: int, bad: set[int]) -> None:
        super().__init__(n)
        for b in bad:
            for i in (2 * b, 2 * b + 1):
                self.waves[i] = torch.full_like(self.waves[i], float("nan"))


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.params.append(torch.nn.utils.parameters_to_vector(pl_module.student.parameters()))


def _fit(system: PretrainSystem, data: _Clips, steps: int, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        gradient_clip_val=1.0,
        callbacks=list(callbacks),
    )
    trainer.fit(system, DataLoader(data, batch_size=2, collate_fn=_collate))
    return trainer


def test_nonfinite_update_is_skipped_on_the_device_by_the_fused_optimizer() -> None:
    system = tiny_system(nonfinite=NonFiniteGuard(max_in_row=3, check_every=1))
    snapshots = _Snapshots()
    trainer = _fit(system, _NaNAt(8, bad={1}), 4, snapshots)
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"]  # fp32 with clipping: the sync-free path
    # the NaN batch changed nothing; the finite batches around it did
    assert torch.equal(snapshots.params[1], snapshots.params[0])
    assert not torch.equal(snapshots.params[2], snapshots.params[1])
    assert all(bool(torch.isfinite(p).all()) for p in snapshots.params)
    # AdamW's step count ignores the skipped update; the counters saw it
    state_steps = {float(s["step"]) for s in optimizer.state.values()}
    assert state_steps == {3.0}
    assert system.nonfinite_skipped == 1


def test_nonfinite_losses_in_a_row_stop_at_the_next_check() -> None:
    # NaN batches at steps 1 and 2; counts are read at steps 0, 2, 4...: step 2 sees the run
    system = tiny_system(nonfinite=NonFiniteGuard(max_in_row=2, check_every=2))
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite losses by step 2"):
        _fit(system, _NaNAt(12, bad={1, 2}), 6)


def test_training_step_never_waits_for_the_device() -> None:
    """No `.item()`/`bool(tensor)` (aten._local_scalar_dense), `nonzero` or boolean-mask
    indexing in the losses or the training step: on a GPU each would stall the step until the
    device catches up. Recorded with a dispatch mode over whole steps (forward, backward,
    optimizer, EMA) on the sync-free path; the model's own scalar reads are of host tensors
    (lengths stay on the host, layerdrop draws on the CPU generator) and are left out."""
    import collections
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.where: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = str(func)
            indices = args[1] if name.startswith("aten.index") and len(args) > 1 else ()
            boolean = any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (indices if isinstance(indices, (list, tuple)) else ())
            )
            if boolean or "nonzero" in name or "masked_select" in name or "_local_scalar" in name:
                ours = [
                    f"{f.filename.split('emotion_ssl/')[-1]}:{f.lineno}"
                    for f in traceback.extract_stack()
                    if "/emotion_ssl/" in f.filename
                ]
                if ours and not ours[-1].startswith("models/"):
                    self.where[f"{name} at {ours[-1]}"] += 1
            return func(*args, **(kwargs or {}))

    recorder = Recorder()

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step > 0:  # step 0 is a periodic check step
                recorder.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step > 1:
                recorder.__exit__(None, None, None)

    system = tiny_system(
        objective=ObjectiveSettings(
            top_k=2, category_weight=1.0, num_classes=2, category_ramp_steps=0
        ),
        collapse=CollapseGuard(check_every=1000),
        nonfinite=NonFiniteGuard(check_every=1000),
    )
    data = _Clips(8)
    _fit(system, data, 3, Record())
    assert not recorder.where, dict(recorder.where)


def test_ema_anneal_over_the_whole_run() -> None:
    """teacher.anneal_steps=-1: the decay rises from start to end over the trainer's
    max_steps."""
    system = tiny_system(teacher=TeacherSettings(decay_start=0.9, decay_end=0.99, anneal_steps=-1))
    decays: list[float] = []

    class Decays(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            decays.append(pl_module.teacher.decay(trainer.global_step))

    _fit(system, _Clips(8), 4, Decays())
    assert system.teacher.anneal_steps == 4
    # after updates 1..4 of 4: 0.9 + 0.09 * k / 4, the last one at the end value
    assert decays == pytest.approx([0.9225, 0.945, 0.9675, 0.99])
