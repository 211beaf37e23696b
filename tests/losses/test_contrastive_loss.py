"""Supervised contrastive loss, projection head and prototype pseudo-labels."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from emotion_ssl.losses import (
    ProjectionHead,
    PrototypeBank,
    centred_unit,
    supervised_contrastive_loss,
)

torch.set_num_threads(1)


def supcon(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, number of anchors) of `supervised_contrastive_loss`."""
    out = supervised_contrastive_loss(*args, **kwargs)
    return out.loss, out.num_anchors


def _random_unit(n: int, p: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, p, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ------------------------------------------------------------------ SupCon
def test_supcon_by_hand_single_positive_each() -> None:
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, -1])  # class 1 has one member; row 3 is unlabelled
    loss, anchors = supcon(z, labels, temperature=0.5)
    # row 0: similarities to rows 1, 2, 3 are 0.6, 0, -1 -> logits 1.2, 0, -2
    loss0 = -(1.2 - math.log(math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    # row 1: similarities to rows 0, 2, 3 are 0.6, 0.8, -0.6 -> logits 1.2, 1.6, -1.2
    loss1 = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-1.2)))
    assert anchors.item() == 2  # rows 2 (single member) and 3 (unlabelled) are not anchors
    assert loss.item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)


def test_supcon_by_hand_two_positives_each() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 0, 1])
    loss, anchors = supcon(z, labels, temperature=0.5)
    # row 0: logits to rows 1, 2, 3 are 0, -2, 1.2; positives 1 and 2
    lse0 = math.log(math.exp(0.0) + math.exp(-2.0) + math.exp(1.2))
    loss0 = -((0.0 - lse0) + (-2.0 - lse0)) / 2
    # row 1: logits to rows 0, 2, 3 are 0, 0, 1.6; positives 0 and 2
    lse1 = math.log(math.exp(0.0) + math.exp(0.0) + math.exp(1.6))
    loss1 = -((0.0 - lse1) + (0.0 - lse1)) / 2
    # row 2: logits to rows 0, 1, 3 are -2, 0, -1.2; positives 0 and 1
    lse2 = math.log(math.exp(-2.0) + math.exp(0.0) + math.exp(-1.2))
    loss2 = -((-2.0 - lse2) + (0.0 - lse2)) / 2
    assert anchors.item() == 3
    assert loss.item() == pytest.approx((loss0 + loss1 + loss2) / 3, rel=1e-6)


def test_supcon_default_temperature_is_0_1() -> None:
    z = _random_unit(6, 3, seed=0)
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    default, _ = supcon(z, labels)
    explicit, _ = supcon(z, labels, temperature=0.1)
    other, _ = supcon(z, labels, temperature=0.5)
    assert default.item() == explicit.item()
    assert default.item() != pytest.approx(other.item())


def test_supcon_single_member_class_is_finite() -> None:
    z = _random_unit(5, 4, seed=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 2, 2])  # class 1 alone
    loss, anchors = supcon(z, labels, temperature=0.1)
    assert anchors.item() == 4
    assert torch.isfinite(loss)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "labels",
    [[-1, -1, -1, -1], [0, 1, 2, 3], [-1, 3, -1, 5]],
    ids=["unlabelled", "unique", "mixed"],
)
def test_supcon_without_anchor_is_zero_and_differentiable(labels: list[int]) -> None:
    z = _random_unit(4, 3, seed=2).requires_grad_(True)
    loss, anchors = supcon(z, torch.tensor(labels))
    assert loss.item() == 0.0
    assert anchors.item() == 0
    assert loss.requires_grad
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros(4, 3))


def test_supcon_is_invariant_to_batch_order() -> None:
    z = _random_unit(12, 5, seed=3)
    labels = torch.tensor([0, 1, 0, -1, 2, 1, -1, 3, 0, 2, -1, 1])
    loss, anchors = supcon(z, labels, temperature=0.2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
    loss_p, anchors_p = supcon(z[perm], labels[perm], temperature=0.2)
    assert anchors.item() == anchors_p.item() == 8  # the lone class-3 row and three -1 rows out
    torch.testing.assert_close(loss_p, loss)


def test_supcon_pulls_positives_together() -> None:
    # a step along -grad raises the similarity of the two class-0 rows
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]], requires_grad=True)
    loss, _ = supcon(z, torch.tensor([0, 0, 1]), temperature=0.5)
    loss.backward()
    assert z.grad is not None
    moved = F.normalize(z.detach() - 0.1 * z.grad, dim=-1)
    assert (moved[0] @ moved[1]).item() > 0.0


# ------------------------------------------------------------------ projection head
def test_projection_head_unit_norm() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(16, out_dim=8)
    out = head(torch.randn(5, 16) * 30)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    assert ProjectionHead(16)(torch.randn(2, 16)).shape == (2, 256)


def test_projection_head_low_precision_input_gives_fp32() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(8, out_dim=4).to(torch.bfloat16)
    out = head(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_projection_head_forward_is_its_projection_normalised() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(8, out_dim=4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(head(x), F.normalize(head.project(x), dim=-1))


# ------------------------------------------------------------------ batch centring
def test_centred_unit_by_hand() -> None:
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0]])
    # batch mean (2, 2/3): centred rows (-1, -2/3), (1, -2/3), (0, 4/3)
    norm = math.sqrt(1 + 4 / 9)
    expected = torch.tensor([[-1 / norm, -2 / 3 / norm], [1 / norm, -2 / 3 / norm], [0.0, 1.0]])
    torch.testing.assert_close(centred_unit(z), expected)
    assert centred_unit(z.to(torch.bfloat16)).dtype == torch.float32


def test_centring_lets_supcon_see_nearly_collinear_embeddings() -> None:
    # what utterance tokens look like in practice: one shared direction, the classes only in
    # a 0.1% difference (cosine 0.999999 between classes)
    shared = torch.tensor([1.0, 0.0])
    offsets = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])
    z = shared + 1e-3 * offsets
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    plain, _ = supcon(F.normalize(z, dim=-1), labels, t)
    assert plain.item() == pytest.approx(math.log(3), abs=1e-4)  # no signal: log(N - 1)
    centred, _ = supcon(centred_unit(z), labels, t)
    # centred rows are exactly +-e2: positive similarity 1, the two negatives -1
    by_hand = -(1 / t - math.log(math.exp(1 / t) + 2 * math.exp(-1 / t)))
    assert centred.item() == pytest.approx(by_hand, rel=1e-5)
    # and a gradient that can move them is there only with centring (random small offsets)
    offsets = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    z = torch.tensor([1.0, 0.0, 0.0]) + 1e-3 * offsets
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for transform in (lambda x: F.normalize(x, dim=-1), centred_unit):
        x = z.clone().requires_grad_(True)
        supcon(transform(x), labels, t)[0].backward()
        assert x.grad is not None
        grads.append(x.grad.norm().item())
    assert grads[1] > 100 * grads[0]


# ------------------------------------------------------------------ prototypes
def test_prototype_first_update_is_the_normalised_class_mean() -> None:
    bank = PrototypeBank(num_classes=3, dim=2)
    assert not bank.initialised.any()
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, -5.0]])
    bank.update(z, torch.tensor([0, 0, 1, -1]))  # the -1 row is ignored
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(bank.prototypes[0], torch.tensor([r, r]))
    torch.testing.assert_close(bank.prototypes[1], torch.tensor([-1.0, 0.0]))
    assert torch.equal(bank.prototypes[2], torch.zeros(2))
    assert bank.initialised.tolist() == [True, True, False]


def test_prototype_later_updates_are_a_normalised_ema() -> None:
    bank = PrototypeBank(num_classes=2, dim=2, momentum=0.5)
    bank.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    bank.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    # 0.5 * (1, 0) + 0.5 * (0, 1) = (0.5, 0.5) -> normalised
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(bank.prototypes[0], torch.tensor([r, r]))
    bank.update(torch.tensor([[0.0, -1.0]]), torch.tensor([0]))
    # 0.5 * (r, r) + 0.5 * (0, -1) = (r / 2, (r - 1) / 2) -> normalised
    x, y = r / 2, (r - 1) / 2
    n = math.hypot(x, y)
    torch.testing.assert_close(bank.prototypes[0], torch.tensor([x / n, y / n]))


def _ready_bank(**kwargs: float) -> PrototypeBank:
    bank = PrototypeBank(num_classes=3, dim=2, **kwargs)  # type: ignore[arg-type]
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    return bank


def test_pseudo_labels_respect_the_warmup() -> None:
    bank = _ready_bank(threshold=0.8, warmup_steps=10)
    z = torch.tensor([[0.96, 0.28]])
    labels = torch.tensor([-1])
    assert bank.pseudo_labels(z, labels, step=9).tolist() == [-1]
    assert bank.pseudo_labels(z, labels, step=10).tolist() == [0]


def test_pseudo_labels_respect_the_threshold_and_keep_labels() -> None:
    bank = _ready_bank(threshold=0.8, warmup_steps=0)
    r = 1 / math.sqrt(2)
    z = torch.tensor(
        [
            [0.96, 0.28],  # cos 0.96 to class 0 -> 0
            [0.28, 0.96],  # cos 0.96 to class 1 -> 1
            [r, r],  # cos 0.71 to both: below 0.8 -> stays -1
            [0.0, 1.0],  # labelled 0, nearest class 1: the label is kept
            [-1.0, 0.0],  # far from both -> stays -1
        ]
    )
    labels = torch.tensor([-1, -1, -1, 0, -1])
    assert bank.pseudo_labels(z, labels, step=5).tolist() == [0, 1, -1, 0, -1]


def test_pseudo_labels_ignore_uninitialised_classes() -> None:
    bank = PrototypeBank(num_classes=3, dim=2, threshold=-1.5, warmup_steps=0)
    bank.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    # (-1, 0) has cosine -1 to class 0 and 0 to the zero prototypes of classes 1 and 2
    out = bank.pseudo_labels(torch.tensor([[-1.0, 0.0]]), torch.tensor([-1]), step=0)
    assert out.tolist() == [0]


def test_pseudo_labels_before_any_update_are_unchanged() -> None:
    bank = PrototypeBank(num_classes=2, dim=2, threshold=-2.0, warmup_steps=0)
    out = bank.pseudo_labels(torch.tensor([[1.0, 0.0]]), torch.tensor([-1]), step=100)
    assert out.tolist() == [-1]
