"""EMA teacher: decay schedule, exact EMA arithmetic, deep copy, no gradients, eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emotion_ssl.models import EncoderConfig
from emotion_ssl.models.encoder import ContextEncoder
from emotion_ssl.models.teacher import EMATeacher, ema_decay_at

torch.set_num_threads(1)

E = EncoderConfig.tiny().num_utterance_tokens  # 10
D = EncoderConfig.tiny().embed_dim  # 64


def _student(seed: int = 0) -> ContextEncoder:
    torch.manual_seed(seed)
    return ContextEncoder(EncoderConfig.tiny())


def _features(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def _fill(param: nn.Parameter, values: list[float]) -> None:
    """Write `values` into the first len(values) elements of a parameter."""
    with torch.no_grad():
        flat = param.view(-1)
        flat[: len(values)] = torch.tensor(values, dtype=param.dtype)


# ------------------------------------------------------------------ decay schedule
def test_decay_endpoints_and_midpoint() -> None:
    assert ema_decay_at(0, 0.999, 0.99999, 20_000) == 0.999
    assert ema_decay_at(20_000, 0.999, 0.99999, 20_000) == 0.99999
    assert ema_decay_at(50_000, 0.999, 0.99999, 20_000) == 0.99999
    # halfway: 0.999 + 0.00099 / 2
    assert ema_decay_at(10_000, 0.999, 0.99999, 20_000) == pytest.approx(0.999495, abs=1e-12)
    # a quarter of the way: 0.999 + 0.00099 / 4
    assert ema_decay_at(5_000, 0.999, 0.99999, 20_000) == pytest.approx(0.9992475, abs=1e-12)


def test_decay_is_linear_then_flat() -> None:
    taus = [ema_decay_at(s, 0.5, 0.9, 4) for s in range(7)]
    assert taus == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9], abs=1e-12)


def test_decay_without_anneal_is_end() -> None:
    assert ema_decay_at(0, 0.9, 0.99, 0) == 0.99
    assert ema_decay_at(3, 0.9, 0.99, -1) == 0.99


def test_teacher_decay_uses_reference_defaults() -> None:
    teacher = EMATeacher(_student())
    assert teacher.decay(0) == 0.999
    assert teacher.decay(20_000) == 0.99999
    assert teacher.decay(10_000) == pytest.approx(0.999495, abs=1e-12)


# ------------------------------------------------------------------ EMA arithmetic
def test_update_is_exact_lerp_on_known_values() -> None:
    student = _student()
    teacher = EMATeacher(student, decay_start=0.75, decay_end=0.75, anneal_steps=0)
    _fill(teacher.encoder.utterance_tokens, [1.0, -2.0, 0.5, 8.0])
    _fill(student.utterance_tokens, [3.0, 2.0, 0.0, -8.0])
    tau = teacher.update(student, step=0)
    assert tau == 0.75
    # 0.75 * t + 0.25 * s, by hand
    got = teacher.encoder.utterance_tokens.view(-1)[:4].tolist()
    assert got == [1.5, -1.0, 0.375, 4.0]


def test_two_updates_at_half_decay() -> None:
    student = _student()
    teacher = EMATeacher(student, decay_start=0.5, decay_end=0.5, anneal_steps=10)
    _fill(teacher.encoder.alibi_scale, [1.0, 0.0, -4.0])
    _fill(student.alibi_scale, [3.0, 8.0, 4.0])
    teacher.update(student, step=0)
    # t1 = (t0 + s) / 2 = [2, 4, 0]; t2 = (t1 + s) / 2 = [2.5, 6, 2]
    assert teacher.encoder.alibi_scale.view(-1)[:3].tolist() == [2.0, 4.0, 0.0]
    teacher.update(student, step=1)
    assert teacher.encoder.alibi_scale.view(-1)[:3].tolist() == [2.5, 6.0, 2.0]


def test_update_uses_the_scheduled_decay() -> None:
    student = _student()
    teacher = EMATeacher(student)  # 0.999 -> 0.99999 over 20 000 updates
    _fill(teacher.encoder.utterance_tokens, [1.0])
    _fill(student.utterance_tokens, [0.0])
    assert teacher.update(student, step=0) == 0.999
    assert teacher.encoder.utterance_tokens.view(-1)[0].item() == pytest.approx(0.999, rel=1e-6)
    assert teacher.update(student, step=30_000) == 0.99999
    # 0.999 * 0.99999 + 0.00001 * 0
    expected = 0.999 * 0.99999
    assert teacher.encoder.utterance_tokens.view(-1)[0].item() == pytest.approx(expected, rel=1e-6)


def test_update_moves_every_parameter() -> None:
    student = _student(0)
    teacher = EMATeacher(_student(1), decay_start=0.9, decay_end=0.9, anneal_steps=0)
    before = {n: p.detach().clone() for n, p in teacher.encoder.named_parameters()}
    teacher.update(student, step=0)
    student_params = dict(student.named_parameters())
    for name, p in teacher.encoder.named_parameters():
        expected = 0.9 * before[name] + 0.1 * student_params[name].detach()
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6, msg=name)


def test_zero_decay_copies_the_student_exactly() -> None:
    student = _student(0)
    teacher = EMATeacher(_student(1), decay_start=0.0, decay_end=0.0, anneal_steps=0)
    teacher.update(student, step=0)
    for (name, t), s in zip(teacher.encoder.named_parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s.detach()), name


def test_update_leaves_the_student_alone() -> None:
    student = _student()
    snapshot = [p.detach().clone() for p in student.parameters()]
    teacher = EMATeacher(_student(1), decay_start=0.5, decay_end=0.5, anneal_steps=0)
    teacher.update(student, step=0)
    for p, before in zip(student.parameters(), snapshot, strict=True):
        assert torch.equal(p, before)


def test_update_rejects_a_different_structure() -> None:
    teacher = EMATeacher(_student())
    other = ContextEncoder(EncoderConfig(**{**EncoderConfig.tiny().to_dict(), "depth": 3}))
    with pytest.raises(RuntimeError, match="different structures"):
        teacher.update(other, step=0)


# ------------------------------------------------------------------ copy, dtype, grads
def test_teacher_is_a_deep_copy() -> None:
    student = _student()
    teacher = EMATeacher(student, decay_start=0.5, decay_end=0.5, anneal_steps=0)
    for t, s in zip(teacher.encoder.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s.detach())
        assert t.data_ptr() != s.data_ptr()
    _fill(teacher.encoder.utterance_tokens, [1.0])
    _fill(student.utterance_tokens, [5.0])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert teacher.encoder.utterance_tokens.view(-1)[0].item() == 1.0  # untouched
    teacher.update(student, step=0)
    assert teacher.encoder.utterance_tokens.view(-1)[0].item() == 3.5  # (1 + 6) / 2


def test_teacher_parameters_are_frozen_fp32() -> None:
    student = _student().to(torch.bfloat16)
    teacher = EMATeacher(student, decay_start=0.5, decay_end=0.5, anneal_steps=0)
    for t, s in zip(teacher.encoder.parameters(), student.parameters(), strict=True):
        assert t.dtype == torch.float32
        assert not t.requires_grad
        assert torch.equal(t, s.detach().float())
    teacher.update(student, step=0)
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_no_teacher_gradient_after_student_backward() -> None:
    student = _student()
    teacher = EMATeacher(student)
    features = _features().requires_grad_(True)
    target = teacher(features, None)
    assert not target.x.requires_grad
    assert all(not f.requires_grad for f in target.ffn_outputs or [])
    loss = student(features).x.pow(2).mean() + (student(features).x * target.x).mean()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.utterance_tokens.grad is not None


def test_teacher_forward_returns_layers_in_fp32() -> None:
    teacher = EMATeacher(_student())
    out = teacher(_features().half(), None)
    assert out.x.dtype == torch.float32
    assert out.ffn_outputs is not None and len(out.ffn_outputs) == 3  # 1 prenet + 2 shared
    assert out.x.shape == (2, E + 12, D)


# ------------------------------------------------------------------ eval mode
def test_train_keeps_the_teacher_in_eval_mode() -> None:
    teacher = EMATeacher(_student())
    assert teacher.train() is teacher
    teacher.train(True)
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())


def test_parent_train_does_not_wake_the_teacher() -> None:
    student = _student()
    teacher = EMATeacher(student)
    parent = nn.ModuleDict({"student": student, "teacher": teacher})
    parent.train()
    assert student.training
    assert all(not m.training for m in teacher.encoder.modules())


def test_teacher_forward_is_deterministic_after_train() -> None:
    # dropout 0.1 and layerdrop 0.05 are active in training mode; the teacher never uses them
    teacher = EMATeacher(_student())
    teacher.train()
    features = _features()
    torch.manual_seed(0)
    a = teacher(features, None).x
    torch.manual_seed(1)
    b = teacher(features, None).x
    assert torch.equal(a, b)


def test_load_from_replaces_the_weights() -> None:
    teacher = EMATeacher(_student(0))
    other = _student(1).to(torch.bfloat16)
    teacher.load_from(other.state_dict())
    for t, s in zip(teacher.encoder.parameters(), other.parameters(), strict=True):
        assert t.dtype == torch.float32
        assert torch.equal(t, s.detach().float())
