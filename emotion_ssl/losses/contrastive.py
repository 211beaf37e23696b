"""Category-level supervised contrastive term (the project's emotion2vec-S direction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# `category_skip_reason` codes: why a step's category term is 0 (never NaN)
COMPUTED = 0
NO_LABELLED = 1  # no labelled clone in the global batch
NO_POSITIVE = 2  # labelled clones, but none shares its label with another candidate key
NO_NEGATIVE = 3  # every candidate key is a positive (one class fills the batch): skipped
SKIP_REASONS = {
    COMPUTED: "computed",
    NO_LABELLED: "no labelled clone",
    NO_POSITIVE: "no positive pair",
    NO_NEGATIVE: "no negative key",
}


def upcast(x: Tensor) -> Tensor:
    """x in at least fp32 (bf16/fp16 -> fp32; fp64 stays): softmax over similarities / 0.1
    needs fp32, and tests compare exactly in fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class ProjectionHead(nn.Module):
    """Linear(D, D) -> ReLU -> Linear(D, out_dim) -> L2 normalise."""

    def __init__(self, dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, out_dim)

    def project(self, x: Tensor) -> Tensor:
        """x: (N, D) -> (N, out_dim), before normalisation."""
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, D) -> (N, out_dim), unit norm (computed in fp32)."""
        return F.normalize(upcast(self.project(x)), dim=-1)


def centred_unit(projected: Tensor) -> Tensor:
    """Subtract the mean over the rows (the whole global batch), then L2 normalise (>= fp32).

    Utterance-token outputs start, and under the distillation losses stay, nearly collinear
    (mean cosine between clips 0.992 for a random tiny encoder, 0.9999 after 400 updates;
    benchmarks/category_term.py): on the raw unit vectors every similarity is ~1, SupCon sits
    at log(N - 1) and its gradient, proportional to the tiny differences, never grows them.
    Removing the batch mean (what the BatchNorm of SimCLR-style heads does) keeps only what
    tells the rows apart. Prototypes (`PrototypeBank`) and memory rows (`CategoryMemory`)
    are stored as centred here, each with the mean of its own global batch. A batch of one
    row centres to zero (no anchor can form there without a memory).
    """
    z = upcast(projected)
    return F.normalize(z - z.mean(dim=0, keepdim=True), dim=-1)


# ------------------------------------------------------------------ gathering over ranks
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


_host_group: tuple[Any, Any] | None = None  # (the default group it was made for, gloo group)


def rank_sizes(n: int) -> list[int]:
    """Rows on every rank, as host ints ([n] without torch.distributed).

    Exchanged over a CPU (gloo) process group made once per default group: the sizes are
    host numbers already, so no rank waits for its device (an NCCL all_gather of a device
    tensor followed by `.tolist()` would stall every step). A collective: every rank calls it.
    """
    global _host_group
    if not _distributed():
        return [n]
    world = dist.group.WORLD
    if _host_group is None or _host_group[0] is not world:
        _host_group = (world, dist.new_group(backend="gloo"))
    parts = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, torch.tensor([n], dtype=torch.long), group=_host_group[1])
    return [int(p) for p in parts]  # CPU tensors: no device read


def _padded(x: Tensor, rows: int, fill: float) -> Tensor:
    """x (n, ...) with `rows - n` rows of `fill` appended (collectives need equal shapes)."""
    extra = x.new_full((rows - x.size(0), *x.shape[1:]), fill)
    return torch.cat([x, extra], dim=0)


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate x (n_r, ...) of every rank r along dim 0 -> (sum n_r, ...), in rank order,
    keeping gradients (identity without torch.distributed).

    Ranks may hold different row counts (`sizes`, from `rank_sizes`; exchanged here when not
    given): each pads to the largest, all ranks gather, the padding is sliced off with the
    host-known sizes. Backward (torch.distributed.nn's all_gather) SUMS over ranks the
    gradients every rank's loss sends to a rank's rows. Each rank computes the same global
    loss L, so its rows receive W * dL/dx_r, and DDP's averaging of parameter gradients over
    the W ranks then gives exactly dL/dtheta (tests/losses/test_contrastive_ddp.py).
    """
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = rank_sizes(x.size(0)) if sizes is None else sizes
    parts = all_gather(_padded(x, max(sizes), 0.0))
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def gather_no_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """`gather_with_grad` without gradients (labels, teacher embeddings)."""
    if not _distributed():
        return x
    sizes = rank_sizes(x.size(0)) if sizes is None else sizes
    padded = _padded(x.detach(), max(sizes), 0)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


# ------------------------------------------------------------------ the loss
@dataclass
class SupConOutput:
    """One SupCon evaluation (0-dim tensors, no host sync).

    loss: fp32, 0 when skipped (still connected to the graph: DDP needs every parameter
    used); num_anchors: rows that formed an anchor; cross_utterance_positives: (anchor,
    positive) pairs whose positive is not a clone of the anchor's own utterance (another
    utterance's clone or a memory row); skip_reason: COMPUTED or why the loss is 0
    (NO_LABELLED, NO_POSITIVE, NO_NEGATIVE).
    """

    loss: Tensor
    num_anchors: Tensor
    cross_utterance_positives: Tensor
    skip_reason: Tensor


def supervised_contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    *,
    groups: Tensor | None = None,
    clone_positives: bool = True,
    memory: Tensor | None = None,
    memory_labels: Tensor | None = None,
    memory_valid: Tensor | None = None,
) -> SupConOutput:
    """SupCon (Khosla et al., 2020, L_out) over a set of unit embeddings.

    embeddings: (N, P) L2-normalised; labels: (N,) long, -1 = unlabelled; groups: (N,) long
    >= 0, the utterance of each row (clones share it), None = every row its own utterance.
    memory: (M, P) extra keys without gradient (`CategoryMemory`), memory_labels: (M,),
    memory_valid: (M,) bool, False = empty slot.

    Keys of row i: every other row and every valid memory row; with clone_positives=False the
    other clones of i's own utterance are left out of the keys altogether (neither positive
    nor negative: pushing them apart would fight the distillation losses). Positives: keys
    with i's label (i labelled). Anchors: labelled rows with at least one positive and one
    negative key (with no negative, log softmax over positives only carries no category
    information). loss_i = -mean_{p in P(i)} log softmax_{a in keys(i)}(z_i . z_a / t)_p;
    the result is the mean over anchors, 0 with none (see `SupConOutput.skip_reason`).
    """
    N = embeddings.size(0)
    device = embeddings.device
    z = upcast(embeddings)
    keys, key_labels = z, labels
    key_valid = torch.ones(N, dtype=torch.bool, device=device)
    if memory is not None:
        assert memory_labels is not None and memory_valid is not None
        # memory rows are keys only: detached, never anchors
        keys = torch.cat([z, memory.detach().to(z.dtype)], dim=0)  # (N + M, P)
        key_labels = torch.cat([labels, memory_labels], dim=0)
        key_valid = torch.cat([key_valid, memory_valid], dim=0)
    K = keys.size(0)
    rows = torch.arange(N, device=device)
    row_groups = rows if groups is None else groups
    # memory rows belong to no utterance of this batch (group -1)
    key_groups = torch.cat([row_groups, row_groups.new_full((K - N,), -1)])  # (K,)
    is_self = rows.unsqueeze(1) == torch.arange(K, device=device).unsqueeze(0)  # (N, K)
    own_clone = row_groups.unsqueeze(1) == key_groups.unsqueeze(0)  # (N, K), self included
    candidate = key_valid.unsqueeze(0) & ~(is_self if clone_positives else own_clone)

    labelled = labels >= 0
    positives = candidate & (labels.unsqueeze(1) == key_labels.unsqueeze(0)) & labelled.unsqueeze(1)
    num_pos = positives.sum(dim=1)  # (N,)
    num_neg = (candidate & ~positives).sum(dim=1)
    anchors = labelled & (num_pos > 0) & (num_neg > 0)
    num_anchors = anchors.sum()

    logits = z @ keys.t() / temperature  # (N, K)
    masked = logits.masked_fill(~candidate, float("-inf"))
    # a row without any key would give logsumexp(-inf...) and a NaN gradient: zeros instead
    masked = torch.where(candidate.any(dim=1, keepdim=True), masked, 0.0)
    log_prob = logits - torch.logsumexp(masked, dim=1, keepdim=True)  # (N, K)
    # no boolean indexing and no `if anchors.any()`: both would read the device back
    pos_log_prob = torch.where(positives, log_prob, 0.0).sum(dim=1)
    per_row = torch.where(anchors, -pos_log_prob / num_pos.clamp_min(1), 0.0)
    loss = per_row.sum() / num_anchors.clamp_min(1)

    cross = (positives & ~own_clone & anchors.unsqueeze(1)).sum()
    zero = torch.zeros((), dtype=torch.long, device=device)
    reason = torch.where(
        num_anchors > 0,
        zero,
        torch.where(
            ~labelled.any(),
            zero + NO_LABELLED,
            torch.where((labelled & (num_pos > 0)).any(), zero + NO_NEGATIVE, zero + NO_POSITIVE),
        ),
    )
    return SupConOutput(loss, num_anchors, cross, reason)


# ------------------------------------------------------------------ memory and prototypes
class CategoryMemory(nn.Module):
    """A MoCo-style queue of the last `size` rows (clones) of past global batches: their unit
    embeddings, detached, and labels; SupCon's extra keys (never anchors, no gradient).

    Rows are stored exactly as the loss saw them, so with batch centring each is centred with
    the mean of its own global batch: the shared direction drifts between updates by about as
    much as the differences the term looks at, and re-centring old rows with today's mean
    would shift every one of them by that drift. Training steps only (`push` is the caller's
    choice); a step with a non-finite embedding leaves the memory as it was. State (rows and
    write position) is saved in checkpoints and identical on every rank (rows are gathered).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"CategoryMemory size must be >= 1, got {size}")
        self.size = size
        self.pointer = 0  # next slot to write (a host int: no device read)
        self.keys: Tensor
        self.labels: Tensor
        self.valid: Tensor
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))

    @torch.no_grad()
    def push(self, embeddings: Tensor, labels: Tensor) -> None:
        """Write rows (n, P) and labels (n,) over the oldest slots."""
        n = min(embeddings.size(0), self.size)
        # more rows than slots: the last `size` rows
        z, labels = embeddings[-n:].detach().to(self.keys.dtype), labels[-n:]
        index = (torch.arange(n, device=z.device) + self.pointer) % self.size
        ok = torch.isfinite(z).all()  # sync-free: a non-finite step writes nothing
        self.keys.copy_(torch.where(ok, self.keys.index_copy(0, index, z), self.keys))
        self.labels.copy_(torch.where(ok, self.labels.index_copy(0, index, labels), self.labels))
        filled = self.valid.index_fill(0, index, True)
        self.valid.copy_(torch.where(ok, filled, self.valid))
        self.pointer = (self.pointer + n) % self.size

    def get_extra_state(self) -> dict[str, int]:
        return {"pointer": self.pointer}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.pointer = int(state["pointer"])


class PrototypeBank(nn.Module):
    """Class prototypes for pseudo-labels: an EMA (no gradient) of labelled embeddings.

    `PretrainObjective` feeds it the teacher's embeddings (SPEC section 5: "teacher-side EMA
    of labelled embeddings"), batch-centred like the student's when centring is on. After
    `warmup_steps`, an unlabelled embedding whose cosine similarity to its nearest prototype
    reaches `threshold` takes that class as its pseudo-label. Both methods are sync-free.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float = 0.99,
        threshold: float = 0.8,
        warmup_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self.prototypes: Tensor
        self.initialised: Tensor
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("initialised", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Move each class prototype toward the normalised mean of its labelled embeddings
        (N, P); labels (N,), -1 = unlabelled. Nothing moves when an embedding is not finite."""
        z = embeddings.detach().to(self.prototypes.dtype)
        classes = torch.arange(self.prototypes.size(0), device=z.device)
        one_hot = (labels.unsqueeze(1) == classes.unsqueeze(0)).to(z.dtype)  # (N, classes)
        # the class sum has the direction of the class mean: normalising gives the same
        mean = F.normalize(one_hot.t() @ z, dim=1)  # (classes, P)
        mixed = F.normalize(self.momentum * self.prototypes + (1 - self.momentum) * mean, dim=1)
        new = torch.where(self.initialised.unsqueeze(1), mixed, mean)
        moved = (one_hot.sum(dim=0) > 0) & torch.isfinite(z).all()  # (classes,)
        self.prototypes.copy_(torch.where(moved.unsqueeze(1), new, self.prototypes))
        self.initialised.logical_or_(moved)

    @torch.no_grad()
    def pseudo_labels(self, embeddings: Tensor, labels: Tensor, step: int) -> Tensor:
        """labels with confident unlabelled rows (-1) replaced by their nearest class."""
        if step < self.warmup_steps:
            return labels
        sims = embeddings.detach().to(self.prototypes.dtype) @ self.prototypes.t()  # (N, classes)
        # uninitialised classes never win; with none initialised nothing passes the threshold
        sims = sims.masked_fill(~self.initialised.unsqueeze(0), float("-inf"))
        best, cls = sims.max(dim=1)
        take = (labels < 0) & (best >= self.threshold)
        return torch.where(take, cls, labels)
