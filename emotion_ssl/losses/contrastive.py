"""Category-level supervised contrastive term (the project's emotion2vec-S direction)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


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
        return F.normalize(self.project(x).float(), dim=-1)


def centred_unit(projected: Tensor) -> Tensor:
    """Subtract the mean over the rows (the whole global batch), then L2 normalise (fp32).

    Utterance-token outputs start, and under the distillation losses stay, nearly collinear
    (mean cosine between clips 0.992 for a random tiny encoder, 0.9999 after 400 updates;
    benchmarks/category_term.py): on the raw unit vectors every similarity is ~1, SupCon sits
    at log(N - 1) and its gradient, proportional to the tiny differences, never grows them.
    Removing the batch mean (what the BatchNorm of SimCLR-style heads does) keeps only what
    tells the rows apart. Prototypes (`PrototypeBank`) then live in the same batch-centred
    space. A batch of one row centres to zero (no anchor can form there anyway).
    """
    z = projected.float()
    return F.normalize(z - z.mean(dim=0, keepdim=True), dim=-1)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (N, ...) from every process along dim 0, keeping gradients to the local
    part (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate x from every process along dim 0 (labels, no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def supervised_contrastive_loss(
    embeddings: Tensor, labels: Tensor, temperature: float = 0.1
) -> tuple[Tensor, Tensor]:
    """SupCon (Khosla et al., 2020, L_out) over a set of unit embeddings.

    embeddings: (N, P) L2-normalised; labels: (N,) long, -1 = unlabelled. Anchors are the
    labelled rows with at least one positive (another row with the same label); every other
    row is in the denominator. loss_i = -mean_{p in P(i)} log softmax_{a != i}(z_i . z_a / t)_p;
    the result is the mean over anchors. Returns (loss, number of anchors). With no anchor the
    loss is 0 and still connected to the graph (DDP needs every parameter used).
    """
    N = embeddings.size(0)
    z = embeddings.float()
    logits = z @ z.t() / temperature  # (N, N)
    self_mask = torch.eye(N, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, N), -inf on diag

    labelled = labels >= 0
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & labelled.unsqueeze(1) & ~self_mask
    num_pos = positives.sum(dim=1)  # (N,)
    anchors = num_pos > 0
    num_anchors = anchors.sum()
    if N < 2:  # a shape, known on the host; with N >= 2 every row has a finite logit
        return z.sum() * 0.0, num_anchors
    # no boolean indexing and no `if anchors.any()`: both would read the device back
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)  # diag excluded: no -inf
    per_row = torch.where(anchors, -pos_log_prob / num_pos.clamp_min(1), 0.0)
    return per_row.sum() / num_anchors.clamp_min(1), num_anchors


class PrototypeBank(nn.Module):
    """Class prototypes for pseudo-labels: an EMA (no gradient) of labelled embeddings.

    After `warmup_steps`, an unlabelled embedding whose cosine similarity to its nearest
    prototype reaches `threshold` takes that class as its pseudo-label.
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
        """Move each class prototype toward the mean of its labelled embeddings (N, P)."""
        z = embeddings.detach().float()
        for c in labels[labels >= 0].unique().tolist():
            mean = F.normalize(z[labels == c].mean(dim=0), dim=0)
            if bool(self.initialised[c]):
                mixed = self.momentum * self.prototypes[c] + (1 - self.momentum) * mean
                self.prototypes[c] = F.normalize(mixed, dim=0)
            else:
                self.prototypes[c] = mean
                self.initialised[c] = True

    @torch.no_grad()
    def pseudo_labels(self, embeddings: Tensor, labels: Tensor, step: int) -> Tensor:
        """labels with confident unlabelled rows (-1) replaced by their nearest class."""
        if step < self.warmup_steps or not bool(self.initialised.any()):
            return labels
        sims = embeddings.detach().float() @ self.prototypes.t()  # (N, classes)
        sims = sims.masked_fill(~self.initialised.unsqueeze(0), float("-inf"))
        best, cls = sims.max(dim=1)
        take = (labels < 0) & (best >= self.threshold)
        return torch.where(take, cls, labels)
