"""The EMA teacher: an fp32 exponential moving average of the student's context encoder."""

from __future__ import annotations

import contextlib
import copy
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emotion_ssl.models.encoder import ContextEncoder, ContextOutput


@dataclass
class TeacherSettings:
    """The EMA teacher's decay: a linear rise from `decay_start` to `decay_end` over
    `anneal_steps` optimizer updates, then constant (`ema_decay_at`)."""

    decay_start: float = 0.999
    """The decay at update 0."""

    decay_end: float = 0.99999
    """The decay after the rise."""

    anneal_steps: int = 20_000
    """Updates of the linear rise; -1 = the whole run (the trainer's max_steps), so a short
    run's teacher follows the same curve as a long one's."""


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear rise from `start` to `end` over `anneal_steps` updates, then constant."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


def full_parameters(root: nn.Module) -> AbstractContextManager[object]:
    """Every parameter under `root` whole for the EMA step, and what it writes kept.

    FullyShardedDataParallel keeps only a shard of each flattened parameter group per rank
    between steps, so the student's and teacher's parameters are then pieces of different
    sizes (or empty) and `update` cannot pair them. Inside this context the FSDP units under
    `root` are gathered (`summon_full_params`), every rank computes the same EMA step on whole
    tensors, and `writeback` copies each rank's piece of the new teacher back into its shard.
    It costs one all-gather of the model per update (as much as FSDP's own forward) and, for
    the moment, the whole model in memory on every rank. For any module without FSDP it does
    nothing.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in root.modules()):
        return FullyShardedDataParallel.summon_full_params(root, writeback=True)
    return contextlib.nullcontext()


class EMATeacher(nn.Module):
    """Holds the teacher copy of a `ContextEncoder` (positional conv, utterance tokens, ALiBi
    scale, prenet, shared blocks — not the CNN, projection or decoder).

    The teacher is always in eval mode, never requires gradients, keeps fp32 parameters, and
    moves only through `update()`: teacher = tau * teacher + (1 - tau) * student.
    """

    def __init__(
        self,
        student: ContextEncoder,
        decay_start: float = TeacherSettings.decay_start,
        decay_end: float = TeacherSettings.decay_end,
        anneal_steps: int = TeacherSettings.anneal_steps,
    ) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(student).float()
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.decay_start = decay_start
        self.decay_end = decay_end
        self.anneal_steps = anneal_steps
        self.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        # the teacher never trains: dropout and layerdrop stay off whatever the caller asks
        super().train(False)
        return self

    def decay(self, step: int) -> float:
        return ema_decay_at(step, self.decay_start, self.decay_end, self.anneal_steps)

    @torch.no_grad()
    def update(self, student: ContextEncoder, step: int) -> float:
        """One EMA step at optimizer update `step` (0-based); returns the decay used."""
        tau = self.decay(step)
        teacher_params: list[Tensor] = list(self.encoder.parameters())
        student_params = [p.detach().to(torch.float32) for p in student.parameters()]
        if len(teacher_params) != len(student_params):
            raise RuntimeError("teacher and student context encoders have different structures")
        shapes = [(t.shape, s.shape) for t, s in zip(teacher_params, student_params, strict=True)]
        if any(t != s for t, s in shapes):  # e.g. FSDP shards, outside `full_parameters`
            raise RuntimeError(
                "teacher and student parameters differ in shape "
                f"({next((t, s) for t, s in shapes if t != s)}): are they sharded (FSDP)? "
                "Update inside `full_parameters(root)`"
            )
        # lerp(t, s, 1 - tau) = tau * t + (1 - tau) * s, one fused multi-tensor op
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - tau)
        return tau

    @torch.no_grad()
    def forward(self, features: Tensor, padding_mask: Tensor | None) -> ContextOutput:
        """features: (B, T, D) the student's projected CNN features, unmasked, not cloned."""
        if self.encoder.training:  # a framework may flip `.training` directly; never train
            self.encoder.eval()
        return self.encoder(features.float(), padding_mask, return_layers=True)

    @torch.no_grad()
    def copy_from(self, student: ContextEncoder) -> None:
        """Make the teacher an exact copy of the student (as at the start of training)."""
        self.encoder.load_state_dict({k: v.float() for k, v in student.state_dict().items()})

    def load_from(self, state: dict[str, Tensor]) -> None:
        """Start from given teacher weights (e.g. a checkpoint's `_ema`)."""
        self.encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
