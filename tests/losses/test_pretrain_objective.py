"""PretrainObjective (frame + alpha * utterance + gamma * category) and the collapse guard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from emotion_ssl.losses import (
    CollapseGuard,
    LossOutput,
    ObjectiveSettings,
    PretrainObjective,
    TrainingCollapsedError,
    centred_unit,
    feature_std,
    frame_targets,
    supervised_contrastive_loss,
)

torch.set_num_threads(1)


def supcon(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, number of anchors) of `supervised_contrastive_loss`."""
    out = supervised_contrastive_loss(*args, **kwargs)
    return out.loss, out.num_anchors


B, C, T, D, E = 2, 2, 5, 4, 3
R = B * C


@dataclass
class Inputs:
    prediction: torch.Tensor
    frame_target: torch.Tensor
    mask: torch.Tensor
    teacher_layers: list[torch.Tensor]
    tokens: torch.Tensor
    kept_frames: torch.Tensor

    def call(self, objective: PretrainObjective, labels: list[int], step: int) -> LossOutput:
        return objective(
            prediction=self.prediction,
            frame_target=self.frame_target,
            mask=self.mask,
            teacher_layers=self.teacher_layers,
            padding_mask=None,
            tokens=self.tokens,
            kept_frames=self.kept_frames,
            kept_padding=None,
            labels=torch.tensor(labels),
            num_clones=C,
            step=step,
        )


def _inputs() -> Inputs:
    """Prediction = target + 1 on every masked frame, so each masked frame has error D = 4
    and the frame loss is 4 / sqrt(4) = 2. Every utterance token is 1, so the token mean is
    (1, 1, 1, 1) and every embedding of the category head is the same vector."""
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(B, T, D, generator=g) * 2 + 1 for _ in range(2)]
    frame_target = frame_targets(layers, None, top_k=2)  # (B, T, D)
    mask = torch.tensor(
        [
            [True, True, False, False, True],
            [False, True, True, True, False],
            [True, False, True, False, True],
            [False, False, True, True, True],
        ]
    )
    prediction = frame_target.repeat_interleave(C, dim=0) + mask.unsqueeze(-1).float()
    return Inputs(
        prediction=prediction.requires_grad_(True),
        frame_target=frame_target,
        mask=mask,
        teacher_layers=layers,
        tokens=torch.ones(R, E, D, requires_grad=True),
        kept_frames=torch.randn(R, 2, D, generator=g),
    )


# ------------------------------------------------------------------ category ramp
def test_category_weight_ramp() -> None:
    objective = PretrainObjective(
        D, ObjectiveSettings(top_k=2, category_weight=0.4, category_ramp_steps=100)
    )
    assert objective.category_weight_at(0) == 0.0
    assert objective.category_weight_at(50) == pytest.approx(0.2, abs=1e-12)
    assert objective.category_weight_at(25) == pytest.approx(0.1, abs=1e-12)
    assert objective.category_weight_at(100) == pytest.approx(0.4, abs=1e-12)
    assert objective.category_weight_at(10_000) == pytest.approx(0.4, abs=1e-12)


def test_category_weight_without_ramp_or_term() -> None:
    assert PretrainObjective(
        D, ObjectiveSettings(top_k=2, category_weight=0.4, category_ramp_steps=0)
    ).category_weight_at(0) == pytest.approx(0.4)
    disabled = PretrainObjective(D, ObjectiveSettings(top_k=2, category_weight=0.0))
    assert disabled.head is None
    assert disabled.category_weight_at(10**6) == 0.0


# ------------------------------------------------------------------ the total
def test_total_by_hand_code_faithful() -> None:
    torch.manual_seed(0)
    objective = PretrainObjective(
        D,
        ObjectiveSettings(
            utterance_weight=0.5,
            utterance_mode="code_faithful",
            top_k=2,
            category_weight=0.6,
            category_ramp_steps=10,
            projection_dim=3,
        ),
    )
    out = _inputs().call(objective, labels=[0, 1], step=5)
    assert out.frame.item() == pytest.approx(2.0, rel=1e-5)
    # target ~ 0, prediction (1, 1, 1, 1): 4 / sqrt(4) = 2 per clone, summed over 4 clones
    assert out.utterance.item() == pytest.approx(8.0, rel=1e-5)
    assert out.utterance_target.abs().max().item() < 1e-5
    # identical embeddings: every logit is equal, each anchor has one positive among
    # three others -> -log(1/3) = log 3
    assert out.category.item() == pytest.approx(math.log(3), rel=1e-5)
    assert out.num_anchors.item() == 4
    assert out.category_weight == pytest.approx(0.3)  # 0.6 * 5 / 10
    assert out.total.item() == pytest.approx(2.0 + 0.5 * 8.0 + 0.3 * math.log(3), rel=1e-5)
    # and the total is exactly the weighted sum of its reported parts
    parts = out.frame + 0.5 * out.utterance + 0.3 * out.category
    assert out.total.item() == pytest.approx(parts.item(), rel=1e-6)


def test_total_layer_norm_mode_averages_over_clones() -> None:
    objective = PretrainObjective(
        D, ObjectiveSettings(utterance_weight=2.0, utterance_mode="layer_norm", top_k=2)
    )
    inputs = _inputs()
    out = inputs.call(objective, labels=[-1, -1], step=0)
    # target t is layer-normalised (sum 0, sum of squares ~D): ||1 - t||^2 = D + D = 8,
    # / sqrt(4) = 4 per clone, averaged over clones
    assert out.utterance.item() == pytest.approx(4.0, rel=1e-3)
    assert out.total.item() == pytest.approx(out.frame.item() + 2.0 * out.utterance.item())
    # the target is computed per utterance and repeated over its clones (row b*C + c)
    assert out.utterance_target.shape == (R, D)
    assert torch.equal(out.utterance_target[0], out.utterance_target[1])
    assert torch.equal(out.utterance_target[2], out.utterance_target[3])
    assert not torch.allclose(out.utterance_target[0], out.utterance_target[2])


def test_utterance_variant_is_used() -> None:
    inputs = _inputs()
    inputs.tokens = torch.zeros(R, E, D)
    inputs.tokens[:, -1] = 3.0  # last token 3, mean 1
    for variant, expected in (("chunk", 1.0), ("token", 3.0)):
        objective = PretrainObjective(
            D, ObjectiveSettings(top_k=2, utterance_variant=variant, utterance_mode="code_faithful")
        )
        out = inputs.call(objective, labels=[-1, -1], step=0)
        assert out.utterance_prediction[0].tolist() == [expected] * D
    objective = PretrainObjective(
        D, ObjectiveSettings(top_k=2, utterance_variant="global", utterance_mode="code_faithful")
    )
    out = inputs.call(objective, labels=[-1, -1], step=0)
    torch.testing.assert_close(out.utterance_prediction, inputs.kept_frames.mean(dim=1))


def test_no_label_batch_works_unchanged() -> None:
    torch.manual_seed(0)
    objective = PretrainObjective(
        D,
        ObjectiveSettings(
            top_k=2,
            utterance_mode="code_faithful",
            category_weight=1.0,
            category_ramp_steps=0,
            projection_dim=3,
        ),
    )
    inputs = _inputs()
    out = inputs.call(objective, labels=[-1, -1], step=100)
    assert out.category.item() == 0.0
    assert out.num_anchors.item() == 0
    assert out.total.item() == pytest.approx(2.0 + 8.0, rel=1e-5)
    out.total.backward()
    assert inputs.prediction.grad is not None and torch.isfinite(inputs.prediction.grad).all()
    assert objective.head is not None
    # the head is in the graph (DDP needs every parameter used) but gets no gradient
    assert objective.head.fc1.weight.grad is not None
    assert torch.equal(objective.head.fc1.weight.grad, torch.zeros(D, D))


@pytest.mark.parametrize("centring", [True, False])
def test_category_embedding_is_the_projected_token_mean(centring: bool) -> None:
    torch.manual_seed(0)
    objective = PretrainObjective(D, ObjectiveSettings(top_k=2, category_weight=1.0, category_ramp_steps=0, projection_dim=3, category_batch_centring=centring))  # fmt: skip
    inputs = _inputs()
    inputs.tokens = torch.randn(R, E, D)  # rows that differ
    out = inputs.call(objective, labels=[0, 1], step=0)
    assert objective.head is not None
    projected = objective.head.project(inputs.tokens.mean(dim=1))
    embeddings = centred_unit(projected) if centring else F.normalize(projected, dim=-1)
    expected, _ = supcon(embeddings, torch.tensor([0, 0, 1, 1]), 0.1)
    assert out.category.item() == pytest.approx(expected.item(), rel=1e-6)
    other = centred_unit(projected) if not centring else F.normalize(projected, dim=-1)
    assert out.category.item() != pytest.approx(
        supcon(other, torch.tensor([0, 0, 1, 1]), 0.1)[0].item(), rel=1e-3
    )


def test_category_term_disabled() -> None:
    objective = PretrainObjective(
        D, ObjectiveSettings(top_k=2, utterance_mode="code_faithful", category_weight=0.0)
    )
    out = _inputs().call(objective, labels=[0, 1], step=100)
    assert out.category.item() == 0.0
    assert out.category_weight == 0.0
    assert out.num_anchors.item() == 0
    assert out.total.item() == pytest.approx(out.frame.item() + out.utterance.item(), rel=1e-6)


def test_statistics() -> None:
    inputs = _inputs()
    out = inputs.call(PretrainObjective(D, ObjectiveSettings(top_k=2)), labels=[-1, -1], step=0)
    assert out.num_masked.item() == 12
    target_c = inputs.frame_target.repeat_interleave(C, dim=0)
    torch.testing.assert_close(out.target_std, feature_std(target_c[inputs.mask]))
    torch.testing.assert_close(
        out.prediction_std, feature_std(inputs.prediction.detach()[inputs.mask])
    )


def _identity_head(objective: PretrainObjective) -> None:
    """Projection head = identity (P = D), so an embedding is the (centred) unit token mean
    of non-negative tokens: ReLU passes them unchanged."""
    assert objective.head is not None
    with torch.no_grad():
        for fc in (objective.head.fc1, objective.head.fc2):
            fc.weight.copy_(torch.eye(D))
            fc.bias.zero_()


def _pseudo_objective(warmup: int, centring: bool) -> PretrainObjective:
    objective = PretrainObjective(
        D,
        ObjectiveSettings(
            top_k=2,
            category_weight=1.0,
            category_ramp_steps=0,
            num_classes=2,
            projection_dim=D,
            pseudo_labels=True,
            pseudo_label_threshold=0.9,
            pseudo_label_warmup_steps=warmup,
            prototype_momentum=0.5,
            category_batch_centring=centring,
        ),
    )
    _identity_head(objective)
    return objective


# teacher token means of 3 utterances (labelled 0, labelled 1, unlabelled) and the students'
# (one clone each): the unlabelled one is near class 0 for the teacher, near class 1 for the
# student, so the pseudo-label says whose embedding it came from
TEACHER = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.99, 0.1, 0.0, 0.0]])
STUDENT = torch.tensor([[1.0, 0.0, 0.2, 0.0], [0.0, 1.0, 0.0, 0.2], [0.1, 0.99, 0.0, 0.0]])


def test_pseudo_labels_come_from_teacher_prototypes() -> None:
    labels = torch.tensor([0, 1, -1])
    before = _pseudo_objective(warmup=100, centring=False)
    out, num_pseudo = before.category_term(STUDENT.unsqueeze(1), labels, 1, 5, TEACHER.unsqueeze(1))
    assert num_pseudo.item() == 0  # warm-up: only the prototypes move
    assert out.skip_reason.item() == 2  # one row per class: no positive
    bank = before.prototypes
    assert bank is not None
    # first update: each prototype is its class's unit teacher embedding
    torch.testing.assert_close(bank.prototypes, torch.eye(2, D))
    assert bank.initialised.tolist() == [True, True]

    after = _pseudo_objective(warmup=0, centring=False)
    out, num_pseudo = after.category_term(STUDENT.unsqueeze(1), labels, 1, 5, TEACHER.unsqueeze(1))
    # the teacher's cos(row 2, class 0) = 0.99 / |(0.99, 0.1)| = 0.995 >= 0.9 -> class 0,
    # although the student's embedding of it is nearest class 1
    assert num_pseudo.item() == 1
    expected = supervised_contrastive_loss(
        F.normalize(STUDENT, dim=-1), torch.tensor([0, 1, 0]), 0.1
    )
    assert out.num_anchors.item() == 2
    torch.testing.assert_close(out.loss, expected.loss)


def test_teacher_prototypes_live_in_the_batch_centred_space() -> None:
    objective = _pseudo_objective(warmup=0, centring=True)
    labels = torch.tensor([0, 1, -1])
    objective.category_term(STUDENT.unsqueeze(1), labels, 1, 0, TEACHER.unsqueeze(1))
    assert objective.prototypes is not None
    # the prototypes are the teacher rows centred with the teacher batch's mean
    torch.testing.assert_close(objective.prototypes.prototypes, centred_unit(TEACHER)[:2])
    # a second batch moves them by the EMA (momentum 0.5) of the new centred rows
    teacher2 = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    objective.category_term(STUDENT.unsqueeze(1), labels, 1, 1, teacher2.unsqueeze(1))
    mixed = F.normalize(0.5 * centred_unit(TEACHER)[:2] + 0.5 * centred_unit(teacher2)[:2], dim=1)
    torch.testing.assert_close(objective.prototypes.prototypes, mixed)


def test_prototypes_do_not_move_in_eval_or_on_a_non_finite_teacher() -> None:
    objective = _pseudo_objective(warmup=0, centring=False)
    labels = torch.tensor([0, 1, -1])
    objective.eval()
    objective.category_term(STUDENT.unsqueeze(1), labels, 1, 0, TEACHER.unsqueeze(1))
    assert objective.prototypes is not None
    assert not objective.prototypes.initialised.any()
    objective.train()
    bad = TEACHER.clone()
    bad[2, 0] = float("nan")  # an unlabelled row: every prototype stays put all the same
    objective.category_term(STUDENT.unsqueeze(1), labels, 1, 0, bad.unsqueeze(1))
    assert not objective.prototypes.initialised.any()
    assert torch.equal(objective.prototypes.prototypes, torch.zeros(2, D))


def test_pseudo_labels_need_the_teacher_tokens() -> None:
    objective = _pseudo_objective(warmup=0, centring=False)
    with pytest.raises(ValueError, match="teacher_tokens"):
        objective.category_term(STUDENT.unsqueeze(1), torch.tensor([0, 1, -1]), 1, 0)


def test_pseudo_labels_need_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        PretrainObjective(
            D, ObjectiveSettings(top_k=2, category_weight=1.0, pseudo_labels=True, num_classes=1)
        )


# ------------------------------------------------------------------ collapse guard
def test_collapse_guard_waits_for_after_steps() -> None:
    guard = CollapseGuard()  # reference: after 5000 updates, target 0.1, prediction 0.01
    guard.check(0, 0.0, 0.0)
    guard.check(5000, 0.0, 0.0)
    with pytest.raises(TrainingCollapsedError, match="target std"):
        guard.check(5001, 0.0, 0.0)


def test_collapse_guard_thresholds() -> None:
    guard = CollapseGuard(after_steps=10, min_target_std=0.1, min_prediction_std=0.01)
    guard.check(11, 0.1, 0.01)  # at the thresholds: fine
    guard.check(11, 2.0, 3.0)
    with pytest.raises(TrainingCollapsedError, match=r"step 11: target std 0\.05"):
        guard.check(11, 0.05, 1.0)
    with pytest.raises(TrainingCollapsedError, match=r"step 12: prediction std 0\.005"):
        guard.check(12, 1.0, 0.005)
    assert issubclass(TrainingCollapsedError, RuntimeError)


def test_clip_variance_hinge_by_hand() -> None:
    from emotion_ssl.losses.objective import clip_variance_hinge

    # two rows, D = 2; row means [0, 0] and [2, 0.2] (row 1's second frame is padding)
    frames = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[2.0, 0.2], [99.0, 99.0]]])
    padding = torch.tensor([[False, False], [False, True]])
    # unbiased std over 2 rows: dim 0 sqrt(2 + eps), dim 1 sqrt(0.02 + eps)
    std0, std1 = math.sqrt(2.0 + 1e-4), math.sqrt(0.02 + 1e-4)
    expected = (max(0.0, 0.5 - std0) + max(0.0, 0.5 - std1)) / 2
    out = clip_variance_hinge(frames, padding, 0.5)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    # spread enough in every dimension: 0; one row: 0 and still in the graph
    assert clip_variance_hinge(frames * 10, padding, 0.5).item() == 0.0
    one = frames[:1].clone().requires_grad_(True)
    single = clip_variance_hinge(one, None, 0.5)
    assert single.item() == 0.0 and single.requires_grad
