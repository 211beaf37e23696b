"""The pretraining objective: frame + alpha * utterance + gamma(step) * category."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.losses.contrastive import (
    CategoryMemory,
    ProjectionHead,
    PrototypeBank,
    SupConOutput,
    centred_unit,
    gather_no_grad,
    gather_with_grad,
    rank_sizes,
    supervised_contrastive_loss,
    upcast,
)
from emotion_ssl.losses.frame import frame_loss
from emotion_ssl.losses.targets import feature_std, utterance_target
from emotion_ssl.losses.utterance import (
    Reduction,
    UtteranceVariant,
    utterance_loss,
    utterance_prediction,
)

UtteranceMode = Literal["code_faithful", "layer_norm"]


@dataclass
class LossOutput:
    """Every part of one step's objective (scalars are 0-dim tensors; no host sync)."""

    total: Tensor
    frame: Tensor
    utterance: Tensor
    category: Tensor
    category_weight: float
    target_std: Tensor
    prediction_std: Tensor
    num_masked: Tensor
    num_anchors: Tensor
    num_pseudo_labelled: Tensor
    cross_utterance_positives: Tensor  # (anchor, positive) pairs across utterances
    category_skip_reason: Tensor  # 0 = computed, else contrastive.SKIP_REASONS' code
    utterance_prediction: Tensor  # (R, D)
    utterance_target: Tensor  # (R, D)
    variance: Tensor  # the clip-variance hinge (0 when off)


def clip_variance_hinge(frames: Tensor, padding: Tensor | None, target: float) -> Tensor:
    """mean over d of relu(target - std_d): std over the rows of each row's mean frame.

    frames: (R, K, D), padding: (R, K) True = not a frame (or None). VICReg's variance term
    (Bardes et al., 2022) on clip embeddings: it pushes every dimension of the clip means to
    vary across clips by at least `target`, and is 0 once they do. fp32; 0 for one row.
    """
    x = frames.float()
    if padding is None:
        means = x.mean(dim=1)
    else:
        valid = (~padding).unsqueeze(-1).to(x.dtype)  # (R, K, 1)
        means = (x * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
    if means.size(0) < 2:
        return means.sum() * 0.0
    std = torch.sqrt(means.var(dim=0) + 1e-4)  # eps: a finite gradient at zero variance
    return F.relu(target - std).mean()


class TrainingCollapsedError(RuntimeError):
    """Raised by the collapse guard when targets or predictions lose their variance."""


@dataclass
class CollapseGuard:
    """The reference's guard: after `after_steps` updates, stop if the target std falls below
    `min_target_std` or the prediction std below `min_prediction_std`."""

    after_steps: int = 5000
    min_target_std: float = 0.1
    min_prediction_std: float = 0.01

    def check(self, step: int, target_std: float, prediction_std: float) -> None:
        if step <= self.after_steps:
            return
        if target_std < self.min_target_std:
            raise TrainingCollapsedError(
                f"step {step}: target std {target_std:.4g} < {self.min_target_std} — the "
                "teacher's targets have collapsed; lower the learning rate or EMA decay"
            )
        if prediction_std < self.min_prediction_std:
            raise TrainingCollapsedError(
                f"step {step}: prediction std {prediction_std:.4g} < {self.min_prediction_std}"
                " — the student's predictions have collapsed"
            )


class PretrainObjective(nn.Module):
    """Combines the three losses; owns the category term's projection head and prototypes.

    Args:
        dim: model width D.
        utterance_weight: alpha, weight of the utterance-level loss (reference 1.0).
        utterance_variant: "chunk" (mean of the tokens), "token" (last token) or "global".
        utterance_mode: "code_faithful" reproduces the released code (time-mean of the
            instance-normalised target, i.e. zero, summed over clones); "layer_norm" (default)
            uses a non-degenerate target averaged over clones.
        top_k: teacher layers averaged into the targets.
        category_weight: gamma, weight of the supervised contrastive term (0 disables it).
        category_ramp_steps: gamma rises linearly from 0 over this many updates.
        num_classes: labelled emotion classes (needed for pseudo-labels).
        temperature: SupCon temperature.
        projection_dim: output size of the projection head.
        batch_centring: subtract the global batch's mean projection before normalising
            (`centred_unit`; ours, measured in docs/pretraining.md); False = SPEC's plain form.
        pseudo_labels: let confident unlabelled utterances join with pseudo-labels: the
            nearest class prototype of their teacher embedding (the prototypes are an EMA of
            the teacher's labelled embeddings; needs `teacher_tokens` in `forward`).
        pseudo_label_threshold, pseudo_label_warmup_steps, prototype_momentum: their settings.
        clone_positives: True (SPEC) = a clip's other clones are among its positives; False
            = they are left out of its keys (positives only from other utterances).
        memory_size: rows (clones) of past training micro-batches kept as extra keys
            (`CategoryMemory`; 0 = none). Rows of one global micro-batch x
            (accumulate_grad_batches - 1) spans the accumulation window.
        variance_weight, variance_target: ours, opt-in (0 = off): a VICReg-style hinge
            mean_d relu(variance_target - std_d) on the clip means of the student's kept
            frames across the rows of the batch (`clip_variance_hinge`), against the clip
            embeddings collapsing onto a few directions (docs/pretraining.md, monitor).
    """

    def __init__(
        self,
        dim: int,
        utterance_weight: float = 1.0,
        utterance_variant: UtteranceVariant = "chunk",
        utterance_mode: UtteranceMode = "layer_norm",
        top_k: int = 8,
        category_weight: float = 0.0,
        category_ramp_steps: int = 1000,
        num_classes: int = 0,
        temperature: float = 0.1,
        projection_dim: int = 256,
        pseudo_labels: bool = False,
        pseudo_label_threshold: float = 0.8,
        pseudo_label_warmup_steps: int = 1000,
        prototype_momentum: float = 0.99,
        batch_centring: bool = True,
        clone_positives: bool = True,
        memory_size: int = 0,
        variance_weight: float = 0.0,
        variance_target: float = 0.5,
    ) -> None:
        super().__init__()
        self.variance_weight = variance_weight
        self.variance_target = variance_target
        self.utterance_weight = utterance_weight
        self.utterance_variant: UtteranceVariant = utterance_variant
        self.utterance_mode: UtteranceMode = utterance_mode
        self.top_k = top_k
        self.category_weight = category_weight
        self.category_ramp_steps = category_ramp_steps
        self.temperature = temperature
        self.batch_centring = batch_centring
        self.clone_positives = clone_positives
        if memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {memory_size}")
        self.head: ProjectionHead | None = None
        self.prototypes: PrototypeBank | None = None
        self.memory: CategoryMemory | None = None
        if category_weight > 0:
            self.head = ProjectionHead(dim, projection_dim)
            if memory_size > 0:
                self.memory = CategoryMemory(memory_size, projection_dim)
            if pseudo_labels:
                if num_classes < 2:
                    raise ValueError("pseudo_labels needs num_classes >= 2")
                self.prototypes = PrototypeBank(
                    num_classes,
                    projection_dim,
                    prototype_momentum,
                    pseudo_label_threshold,
                    pseudo_label_warmup_steps,
                )

    def category_weight_at(self, step: int) -> float:
        if self.category_weight <= 0:
            return 0.0
        if self.category_ramp_steps <= 0:
            return self.category_weight
        return self.category_weight * min(1.0, step / self.category_ramp_steps)

    def forward(
        self,
        prediction: Tensor,
        frame_target: Tensor,
        mask: Tensor,
        teacher_layers: list[Tensor],
        padding_mask: Tensor | None,
        tokens: Tensor,
        kept_frames: Tensor,
        kept_padding: Tensor | None,
        labels: Tensor,
        num_clones: int,
        step: int,
        teacher_tokens: Tensor | None = None,
    ) -> LossOutput:
        """
        prediction: (R, T, D) decoder output, R = B * num_clones (row b*C + c = clone c of b);
        frame_target: (B, T, D) teacher frame target; mask: (R, T) True = masked;
        teacher_layers: per shared block (B, T, D) teacher FFN outputs, tokens removed;
        padding_mask: (B, T) True = padding or None; tokens: (R, E, D) student token outputs;
        kept_frames: (R, K, D) student outputs of the kept frames, kept_padding: (R, K);
        labels: (B,) long, -1 = unlabelled; step: optimizer updates done so far;
        teacher_tokens: (B, E, D) teacher utterance-token outputs (for pseudo-labels).
        """
        C = num_clones
        target_c = frame_target.repeat_interleave(C, dim=0)  # (R, T, D)
        loss_frame = frame_loss(prediction, target_c, mask)

        utt_pred = utterance_prediction(self.utterance_variant, tokens, kept_frames, kept_padding)
        utt_tgt = utterance_target(
            self.utterance_mode, teacher_layers, frame_target, padding_mask, self.top_k
        ).repeat_interleave(C, dim=0)  # (R, D)
        reduction: Reduction = "sum" if self.utterance_mode == "code_faithful" else "mean"
        loss_utt = utterance_loss(utt_pred, utt_tgt, reduction)

        gamma = self.category_weight_at(step)
        zero = torch.zeros((), dtype=torch.long, device=prediction.device)
        category = SupConOutput(prediction.new_zeros((), dtype=torch.float32), zero, zero, zero)
        num_pseudo = zero
        if self.head is not None:
            category, num_pseudo = self.category_term(tokens, labels, C, step, teacher_tokens)

        total = loss_frame + self.utterance_weight * loss_utt + gamma * category.loss
        loss_var = prediction.new_zeros((), dtype=torch.float32)
        if self.variance_weight > 0:
            loss_var = clip_variance_hinge(kept_frames, kept_padding, self.variance_target)
            total = total + self.variance_weight * loss_var
        with torch.no_grad():
            target_std = feature_std(target_c, mask)
            prediction_std = feature_std(prediction, mask)
        return LossOutput(
            total=total,
            frame=loss_frame,
            utterance=loss_utt,
            category=category.loss,
            category_weight=gamma,
            target_std=target_std,
            prediction_std=prediction_std,
            num_masked=mask.sum(),
            num_anchors=category.num_anchors,
            num_pseudo_labelled=num_pseudo,
            cross_utterance_positives=category.cross_utterance_positives,
            category_skip_reason=category.skip_reason,
            utterance_prediction=utt_pred,
            utterance_target=utt_tgt,
            variance=loss_var,
        )

    def _unit(self, projected: Tensor) -> Tensor:
        """(N, P) projections of the global batch -> unit embeddings (fp32)."""
        if self.batch_centring:
            return centred_unit(projected)
        return F.normalize(upcast(projected), dim=-1)

    def category_term(
        self,
        tokens: Tensor,
        labels: Tensor,
        num_clones: int,
        step: int,
        teacher_tokens: Tensor | None = None,
    ) -> tuple[SupConOutput, Tensor]:
        """SupCon over every clone of the global batch (all ranks, uneven sizes allowed).

        tokens: (R, E, D) student token outputs of this rank, R = B * num_clones (row
        b*C + c); labels: (B,) long, -1 = unlabelled; teacher_tokens: (B, E, D). Returns the
        loss output and the number of pseudo-labelled clones. Every rank computes the same
        global loss (see `gather_with_grad` for why that is right under DDP).
        """
        assert self.head is not None
        C = num_clones
        projected = self.head.project(tokens.mean(dim=1))  # (R, P)
        sizes = rank_sizes(projected.size(0))  # rows on every rank (host ints)
        embeddings = self._unit(gather_with_grad(projected, sizes))  # (N, P), N = sum(sizes)
        utterance_labels = gather_no_grad(labels, [n // C for n in sizes])  # (N / C,)
        num_pseudo = torch.zeros((), dtype=torch.long, device=labels.device)
        if self.prototypes is not None:
            if teacher_tokens is None:
                raise ValueError("pseudo_labels needs the teacher's tokens (teacher_tokens)")
            with torch.no_grad():
                teacher = self.head.project(teacher_tokens.mean(dim=1))  # (B, P)
                teacher = self._unit(gather_no_grad(teacher, [n // C for n in sizes]))
                if self.training:
                    self.prototypes.update(teacher, utterance_labels)
                with_pseudo = self.prototypes.pseudo_labels(teacher, utterance_labels, step)
            num_pseudo = (with_pseudo != utterance_labels).sum() * C
            utterance_labels = with_pseudo
        clone_labels = utterance_labels.repeat_interleave(C)  # (N,), row b*C + c
        # every rank holds whole utterances, so row // C numbers the utterances globally
        groups = torch.arange(embeddings.size(0), device=embeddings.device) // C
        memory = self.memory if self.training else None
        out = supervised_contrastive_loss(
            embeddings,
            clone_labels,
            self.temperature,
            groups=groups,
            clone_positives=self.clone_positives,
            memory=None if memory is None else memory.keys,
            memory_labels=None if memory is None else memory.labels,
            memory_valid=None if memory is None else memory.valid,
        )
        if memory is not None:
            memory.push(embeddings, clone_labels)
        return out, num_pseudo
