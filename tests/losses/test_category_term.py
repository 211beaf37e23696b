"""The category term's rules: own clones, memory keys, skip reasons on small and odd batches,
cross-utterance positive counts; by hand and against a loop-by-loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emotion_ssl.losses import (
    CategoryMemory,
    ObjectiveSettings,
    PretrainObjective,
    centred_unit,
    supervised_contrastive_loss,
)
from emotion_ssl.losses.contrastive import (
    COMPUTED,
    NO_LABELLED,
    NO_NEGATIVE,
    NO_POSITIVE,
    SupConOutput,
)

torch.set_num_threads(1)


def _random_unit(n: int, p: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, p, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_supcon(
    z: torch.Tensor,
    labels: list[int],
    groups: list[int],
    clone_positives: bool,
    memory: torch.Tensor,
    memory_labels: list[int],
    t: float,
) -> tuple[float, int, int]:
    """The documented definition, one anchor and one key at a time, in fp64."""
    keys = torch.cat([z, memory]).double()
    key_labels = labels + memory_labels
    key_groups = groups + [-1] * len(memory_labels)
    total, anchors, cross = 0.0, 0, 0
    for i in range(len(labels)):
        if labels[i] < 0:
            continue
        candidates = [
            k
            for k in range(len(key_labels))
            if k != i and (clone_positives or key_groups[k] != groups[i])
        ]
        positives = [k for k in candidates if key_labels[k] == labels[i]]
        if not positives or len(positives) == len(candidates):
            continue
        logits = {k: float(z[i].double() @ keys[k]) / t for k in candidates}
        lse = math.log(sum(math.exp(v) for v in logits.values()))
        total += -sum(logits[p] - lse for p in positives) / len(positives)
        anchors += 1
        cross += sum(key_groups[p] != groups[i] for p in positives)
    return total / max(anchors, 1), anchors, cross


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("clone_positives", [True, False])
@pytest.mark.parametrize("memory_rows", [0, 5])
def test_supcon_matches_the_loop_reference(clone_positives: bool, memory_rows: int) -> None:
    z = _random_unit(12, 4, seed=0)
    labels = [0, 0, 1, 1, -1, -1, 2, 2, 0, 0, -1, -1]  # 6 utterances x 2 clones
    groups = [i // 2 for i in range(12)]
    memory = _random_unit(memory_rows, 4, seed=1)
    memory_labels = [1, -1, 2, 0, 1][:memory_rows]
    out = supervised_contrastive_loss(
        z,
        torch.tensor(labels),
        0.3,
        groups=torch.tensor(groups),
        clone_positives=clone_positives,
        memory=memory if memory_rows else None,
        memory_labels=torch.tensor(memory_labels) if memory_rows else None,
        memory_valid=torch.ones(memory_rows, dtype=torch.bool) if memory_rows else None,
    )
    loss, anchors, cross = reference_supcon(
        z, labels, groups, clone_positives, memory, memory_labels, 0.3
    )
    assert out.loss.item() == pytest.approx(loss, rel=1e-6)
    assert out.num_anchors.item() == anchors
    assert out.cross_utterance_positives.item() == cross
    assert out.skip_reason.item() == COMPUTED


# ------------------------------------------------------------------ own clones
def test_own_clones_left_out_by_hand() -> None:
    # utterance 0 has clones rows 0 and 1; rows 2 and 3 are utterances 1 and 2
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, -1])
    groups = torch.tensor([0, 0, 1, 2])
    out = supervised_contrastive_loss(z, labels, 0.5, groups=groups, clone_positives=False)
    # row 0: keys rows 2, 3 (its clone row 1 is out) -> logits 0, -2; positive row 2
    loss0 = math.log(1 + math.exp(-2.0))
    # row 1: keys rows 2, 3 -> logits 1.6, -1.2; positive row 2
    loss1 = -(1.6 - math.log(math.exp(1.6) + math.exp(-1.2)))
    # row 2: keys rows 0, 1, 3 -> logits 0, 1.6, 0; positives rows 0 and 1
    lse2 = math.log(2 + math.exp(1.6))
    loss2 = -((0.0 - lse2) + (1.6 - lse2)) / 2
    assert out.num_anchors.item() == 3
    assert out.loss.item() == pytest.approx((loss0 + loss1 + loss2) / 3, rel=1e-6)
    # pairs 0->2, 1->2, 2->0, 2->1 cross utterances, with or without the clones as positives
    assert out.cross_utterance_positives.item() == 4
    kept = supervised_contrastive_loss(z, labels, 0.5, groups=groups)
    assert kept.cross_utterance_positives.item() == 4
    assert kept.loss.item() != pytest.approx(out.loss.item())


def test_a_lone_utterance_without_its_clones_has_no_positive() -> None:
    z = _random_unit(6, 3, seed=2)  # 3 utterances x 2 clones: one labelled
    labels = torch.tensor([1, 1, -1, -1, -1, -1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    with_clones = supervised_contrastive_loss(z, labels, groups=groups)
    assert with_clones.num_anchors.item() == 2
    assert with_clones.cross_utterance_positives.item() == 0  # own clones only
    alone = supervised_contrastive_loss(z, labels, groups=groups, clone_positives=False)
    assert alone.skip_reason.item() == NO_POSITIVE
    assert alone.loss.item() == 0.0


# ------------------------------------------------------------------ small and odd batches
def _skip_case(labels: list[int], z: torch.Tensor | None = None) -> SupConOutput:
    x = (_random_unit(len(labels), 3, seed=3) if z is None else z).requires_grad_(True)
    out = supervised_contrastive_loss(x, torch.tensor(labels), 0.5)
    out.loss.backward()  # always connected to the graph, never NaN
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if out.skip_reason.item() != COMPUTED:
        assert out.loss.item() == 0.0 and out.num_anchors.item() == 0
        assert torch.equal(x.grad, torch.zeros_like(x))
    return out


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([-1, -1, -1], NO_LABELLED),
        ([0], NO_POSITIVE),  # one row: not even a key
        ([0, -1, -1], NO_POSITIVE),  # one labelled row
        ([0, 1], NO_POSITIVE),  # two labelled rows, two classes, nothing else
        ([0, 1, -1], NO_POSITIVE),
        ([2, 2], NO_NEGATIVE),  # two labelled rows of one class, nothing else
        ([1, 1, 1, 1], NO_NEGATIVE),  # one class fills the batch
    ],
)
def test_skipped_batches_are_zero_with_a_reason(labels: list[int], reason: int) -> None:
    assert _skip_case(labels).skip_reason.item() == reason


def test_two_labelled_rows_of_one_class_among_unlabelled_by_hand() -> None:
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    out = _skip_case([0, 0, -1], z)
    # row 0: logits 1.2 (positive), -2; row 1: logits 1.2 (positive), -1.2
    loss0 = -(1.2 - math.log(math.exp(1.2) + math.exp(-2.0)))
    loss1 = -(1.2 - math.log(math.exp(1.2) + math.exp(-1.2)))
    assert out.skip_reason.item() == COMPUTED
    assert out.num_anchors.item() == 2
    assert out.loss.item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)


def _objective(**kwargs: object) -> PretrainObjective:
    torch.manual_seed(0)
    return PretrainObjective(
        4,
        ObjectiveSettings(
            top_k=1, category_weight=1.0, category_ramp_steps=0, projection_dim=3, **kwargs
        ),
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labels", "clones", "reason"),
    [
        ([3], 1, NO_POSITIVE),  # one row: batch centring makes it 0, still no NaN
        ([3, 3], 1, NO_NEGATIVE),  # centred to two opposite rows: no negative
        ([3], 8, NO_NEGATIVE),  # one labelled clip, its 8 clones only
        ([-1], 8, NO_LABELLED),
    ],
)
def test_small_global_batches_through_the_objective(
    labels: list[int], clones: int, reason: int
) -> None:
    objective = _objective()
    tokens = torch.randn(len(labels) * clones, 2, 4, requires_grad=True)
    out, _ = objective.category_term(tokens, torch.tensor(labels), clones, 0)
    out.loss.backward()
    assert out.skip_reason.item() == reason
    assert out.loss.item() == 0.0
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()


def test_one_labelled_clip_among_unlabelled_contrasts_its_clones() -> None:
    objective = _objective()
    tokens = torch.randn(3 * 8, 2, 4)  # 3 clips x 8 clones, one labelled
    out, _ = objective.category_term(tokens, torch.tensor([-1, 2, -1]), 8, 0)
    assert out.skip_reason.item() == COMPUTED
    assert out.num_anchors.item() == 8
    assert out.cross_utterance_positives.item() == 0  # 8 x 7 positives, all own clones


# ------------------------------------------------------------------ memory
def test_memory_keys_by_hand() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    memory = torch.tensor([[0.6, 0.8], [-1.0, 0.0], [0.7071, 0.7071]], requires_grad=True)
    memory_labels = torch.tensor([0, -1, 0])
    memory_valid = torch.tensor([True, True, False])  # the third slot is empty
    out = supervised_contrastive_loss(
        z.requires_grad_(True),
        torch.tensor([0, 1]),
        0.5,
        memory=memory,
        memory_labels=memory_labels,
        memory_valid=memory_valid,
    )
    # row 0: keys row 1 (logit 0), memory 0 (1.2, positive), memory 1 (-2); row 1 (class 1)
    # has no positive and is no anchor; memory rows are never anchors
    loss0 = -(1.2 - math.log(1 + math.exp(1.2) + math.exp(-2.0)))
    assert out.loss.item() == pytest.approx(loss0, rel=1e-6)
    assert out.num_anchors.item() == 1
    assert out.cross_utterance_positives.item() == 1
    out.loss.backward()
    assert memory.grad is None  # keys without gradient
    without = supervised_contrastive_loss(z, torch.tensor([0, 1]), 0.5)
    assert without.skip_reason.item() == NO_POSITIVE


def test_memory_queue_wraps_and_ignores_non_finite_rows() -> None:
    memory = CategoryMemory(size=3, dim=2)
    assert not memory.valid.any()
    memory.push(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([0, -1]))
    assert memory.pointer == 2
    memory.push(torch.tensor([[3.0, 0.0], [4.0, 0.0]]), torch.tensor([1, 2]))
    # slots 2, 0 took the new rows: [4, 2, 3]
    assert memory.keys[:, 0].tolist() == [4.0, 2.0, 3.0]
    assert memory.labels.tolist() == [2, -1, 1]
    assert memory.valid.all() and memory.pointer == 1
    memory.push(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    assert memory.keys[:, 0].tolist() == [4.0, 2.0, 3.0]  # nothing written...
    assert memory.labels.tolist() == [2, -1, 1]
    assert memory.pointer == 2  # ...but the position moves on (a host int: no device read)
    memory.push(torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 2, 0]))  # more rows than slots
    # the last 3 rows (first columns 2, 4, 6) into slots 2, 0, 1
    assert memory.keys[:, 0].tolist() == [4.0, 6.0, 2.0]
    assert memory.labels.tolist() == [2, 0, 1]
    # rows and write position go to checkpoints
    restored = CategoryMemory(size=3, dim=2)
    restored.load_state_dict(memory.state_dict())
    assert restored.pointer == memory.pointer == 2
    assert torch.equal(restored.keys, memory.keys)


def test_objective_memory_holds_last_batch_as_its_centred_rows() -> None:
    objective = _objective(category_memory_size=4, category_clone_positives=False)
    first = torch.randn(4, 2, 4)  # 2 utterances x 2 clones
    second = torch.randn(4, 2, 4)
    objective.category_term(first, torch.tensor([0, 1]), 2, 0)
    assert objective.head is not None and objective.memory is not None
    with torch.no_grad():
        stored = centred_unit(objective.head.project(first.mean(dim=1)))  # its own batch mean
    torch.testing.assert_close(objective.memory.keys, stored)
    assert objective.memory.labels.tolist() == [0, 0, 1, 1]

    out, _ = objective.category_term(second, torch.tensor([1, -1]), 2, 1)
    embeddings = centred_unit(objective.head.project(second.mean(dim=1)))
    expected = supervised_contrastive_loss(
        embeddings,
        torch.tensor([1, 1, -1, -1]),
        0.1,
        groups=torch.tensor([0, 0, 1, 1]),
        clone_positives=False,
        memory=stored,
        memory_labels=torch.tensor([0, 0, 1, 1]),
        memory_valid=torch.ones(4, dtype=torch.bool),
    )
    torch.testing.assert_close(out.loss, expected.loss)
    # without its clones, each class-1 clone's positives are the 2 class-1 memory rows
    assert out.num_anchors.item() == 2
    assert out.cross_utterance_positives.item() == 4

    objective.eval()  # validation neither reads nor writes the memory
    keys = objective.memory.keys.clone()
    evaluated, _ = objective.category_term(second, torch.tensor([1, -1]), 2, 1)
    assert evaluated.skip_reason.item() == NO_POSITIVE
    assert torch.equal(objective.memory.keys, keys)


def test_memory_size_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="memory_size"):
        _objective(category_memory_size=-1)


# ------------------------------------------------------------------ no host sync
def test_category_term_never_reads_the_device() -> None:
    """No `.item()`/`bool(tensor)` (aten._local_scalar_dense), nonzero or boolean-mask
    indexing in the term with every option on (memory, teacher prototypes, own clones out),
    forward and backward: on a GPU each would stall the step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = str(func)
            indices = args[1] if name.startswith("aten.index") and len(args) > 1 else ()
            boolean = any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (indices if isinstance(indices, (list, tuple)) else ())
            )
            if boolean or "nonzero" in name or "masked_select" in name or "_local_scalar" in name:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    objective = _objective(
        category_memory_size=6,
        category_clone_positives=False,
        num_classes=3,
        pseudo_labels=True,
        pseudo_label_warmup_steps=0,
        pseudo_label_threshold=0.0,
    )
    recorder = Recorder()
    for step, labels in enumerate(([0, -1, 1], [2, 0, -1], [-1, -1, -1])):
        tokens = torch.randn(6, 2, 4, requires_grad=True)  # 3 clips x 2 clones
        with recorder:
            out, _ = objective.category_term(
                tokens, torch.tensor(labels), 2, step, torch.randn(3, 2, 4)
            )
            out.loss.backward()
    assert not recorder.seen, recorder.seen
