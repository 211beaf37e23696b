"""The pretraining objective: frame + alpha * utterance + gamma(step) * category."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import repeat
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
from emotion_ssl.losses.targets import (
    FrameTargetNorm,
    UtteranceMode,
    feature_std,
    utterance_target,
)
from emotion_ssl.losses.utterance import (
    Reduction,
    UtteranceVariant,
    utterance_loss,
    utterance_prediction,
)
from emotion_ssl.models.config import SettingsError


@dataclass
class ObjectiveSettings:
    """What the student learns: frame + utterance_weight * utterance + gamma(step) * category
    (+ variance_weight * clip-variance hinge), and the teacher targets they compare with."""

    top_k: int = 8
    """Teacher blocks averaged into the targets (the top ones); at most the encoder's depth."""

    frame_target_norm: FrameTargetNorm = "instance"
    """"instance" (reference: each channel over the clip's frames, which removes clip-level
    cues from the targets) or "layer" (each frame over channels, keeps them;
    `emotion_ssl.losses.targets.frame_targets`)."""

    utterance_weight: float = 1.0
    """alpha, weight of the utterance-level loss (reference 1.0)."""

    utterance_variant: UtteranceVariant = "chunk"
    """"chunk" (mean of the utterance tokens), "token" (the last one) or "global" (mean of the
    kept frames)."""

    utterance_mode: UtteranceMode = "layer_norm"
    """"layer_norm" (a non-degenerate target, mean over clones) or "code_faithful" (the released
    code: the time-mean of the instance-normalised target, i.e. zero, summed over clones)."""

    category_weight: float = 0.0
    """gamma, weight of the category-level SupCon term (0 = off)."""

    category_ramp_steps: int = 1000
    """gamma rises linearly from 0 over this many updates."""

    num_classes: int = 0
    """Labelled emotion classes (needed for pseudo-labels)."""

    temperature: float = 0.1
    """SupCon temperature."""

    projection_dim: int = 256
    """Output size of the category term's projection head."""

    pseudo_labels: bool = False
    """Confident unlabelled clips join with pseudo-labels: the nearest class prototype of their
    teacher embedding (the prototypes are an EMA of the teacher's labelled embeddings)."""

    pseudo_label_threshold: float = 0.8
    """Cosine to the nearest prototype needed for a pseudo-label."""

    pseudo_label_warmup_steps: int = 1000
    """Updates before pseudo-labels are used."""

    prototype_momentum: float = 0.99
    """EMA momentum of the class prototypes."""

    category_batch_centring: bool = True
    """Centre the projections over the global batch before normalising (`centred_unit`; ours,
    measured in docs/pretraining.md); False = SPEC's plain unit vectors."""

    category_clone_positives: bool = True
    """A clip's own clones count as its positives (SPEC); False leaves them out of its keys
    (positives only from other utterances)."""

    category_memory_size: int = 0
    """Rows (clones) of past training micro-batches kept as extra SupCon keys (0 = none;
    `CategoryMemory`); see docs/pretraining.md, "The category term"."""

    variance_weight: float = 0.0
    """Ours, opt-in (0 = off): weight of a VICReg-style hinge that keeps the clip means of the
    student's frames spread across the batch (`clip_variance_hinge`)."""

    variance_target: float = 0.5
    """The std per dimension the hinge asks of the clip means."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise SettingsError(f"objective.top_k={self.top_k} must be at least 1")
        if self.category_memory_size < 0:
            raise SettingsError(
                f"objective.category_memory_size={self.category_memory_size} must be >= 0"
            )
        if self.pseudo_labels and self.category_weight > 0 and self.num_classes < 2:
            raise SettingsError("objective.pseudo_labels needs objective.num_classes >= 2")


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


class PretrainObjective(nn.Module):
    """Combines the losses (`ObjectiveSettings`); owns the category term's projection head,
    prototypes and memory. dim: model width D."""

    def __init__(self, dim: int, settings: ObjectiveSettings | None = None) -> None:
        super().__init__()
        self.settings = s = settings or ObjectiveSettings()
        self.head: ProjectionHead | None = None
        self.prototypes: PrototypeBank | None = None
        self.memory: CategoryMemory | None = None
        if s.category_weight > 0:
            self.head = ProjectionHead(dim, s.projection_dim)
            if s.category_memory_size > 0:
                self.memory = CategoryMemory(s.category_memory_size, s.projection_dim)
            if s.pseudo_labels:
                self.prototypes = PrototypeBank(
                    s.num_classes,
                    s.projection_dim,
                    s.prototype_momentum,
                    s.pseudo_label_threshold,
                    s.pseudo_label_warmup_steps,
                )

    def category_weight_at(self, step: int) -> float:
        weight, ramp = self.settings.category_weight, self.settings.category_ramp_steps
        if weight <= 0:
            return 0.0
        if ramp <= 0:
            return weight
        return weight * min(1.0, step / ramp)

    def forward(
        self,
        *,
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
        s, C = self.settings, num_clones
        target_c = repeat(frame_target, "b t d -> (b c) t d", c=C)  # row b*C + c: clone c
        loss_frame = frame_loss(prediction, target_c, mask)

        utt_pred = utterance_prediction(s.utterance_variant, tokens, kept_frames, kept_padding)
        utt_tgt = utterance_target(
            s.utterance_mode, teacher_layers, frame_target, padding_mask, s.top_k
        )
        utt_tgt = repeat(utt_tgt, "b d -> (b c) d", c=C)
        reduction: Reduction = "sum" if s.utterance_mode == "code_faithful" else "mean"
        loss_utt = utterance_loss(utt_pred, utt_tgt, reduction)

        gamma = self.category_weight_at(step)
        zero = torch.zeros((), dtype=torch.long, device=prediction.device)
        category = SupConOutput(prediction.new_zeros((), dtype=torch.float32), zero, zero, zero)
        num_pseudo = zero
        if self.head is not None:
            category, num_pseudo = self.category_term(tokens, labels, C, step, teacher_tokens)

        total = loss_frame + s.utterance_weight * loss_utt + gamma * category.loss
        loss_var = prediction.new_zeros((), dtype=torch.float32)
        if s.variance_weight > 0:
            loss_var = clip_variance_hinge(kept_frames, kept_padding, s.variance_target)
            total = total + s.variance_weight * loss_var
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
        if self.settings.category_batch_centring:
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
        clone_labels = repeat(utterance_labels, "n -> (n c)", c=C)  # (N,), row b*C + c
        # every rank holds whole utterances, so row // C numbers the utterances globally
        groups = torch.arange(embeddings.size(0), device=embeddings.device) // C
        memory = self.memory if self.training else None
        out = supervised_contrastive_loss(
            embeddings,
            clone_labels,
            self.settings.temperature,
            groups=groups,
            clone_positives=self.settings.category_clone_positives,
            memory=None if memory is None else memory.keys,
            memory_labels=None if memory is None else memory.labels,
            memory_valid=None if memory is None else memory.valid,
        )
        if memory is not None:
            memory.push(embeddings, clone_labels)
        return out, num_pseudo
