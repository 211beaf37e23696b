"""When a pretraining run stops itself: collapsed targets or predictions, and non-finite
losses. Each guard is its own settings (`--model.collapse.*`, `--model.nonfinite.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


class TrainingCollapsedError(RuntimeError):
    """Raised by the collapse guard when targets or predictions lose their variance."""


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss."""


@dataclass
class CollapseGuard:
    """The reference's guard: after `after_steps` updates, stop if the target std falls below
    `min_target_std` or the prediction std below `min_prediction_std`."""

    after_steps: int = 5000
    """The guard acts after this many updates."""

    min_target_std: float = 0.1
    """The run stops below this target std (the teacher's targets have collapsed)."""

    min_prediction_std: float = 0.01
    """The run stops below this prediction std (the student's predictions have collapsed)."""

    check_every: int = 100
    """Updates between the guard's checks (each reads the device)."""

    def due(self, step: int) -> bool:
        return step % self.check_every == 0

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


@dataclass
class NonFiniteGuard:
    """The one policy for a non-finite loss: its update is skipped, and `max_in_row` of them
    in a row stop the run (`NonFiniteLossError`).

    Where the skip happens depends on the optimizer, never the policy:
    - `skip_on_device`: an optimizer that reads a `found_inf` flag (torch's fused Adam/AdamW,
      the protocol AMP's GradScaler uses) skips the update inside its step. Nothing is read
      back per step; the counts stay on the device and `check` reads them every
      `check_every` updates, so the run stops at the first check after the limit.
    - `skip_on_host`: any other optimizer. The loss is read back and the caller returns None
      from `training_step` (no backward, no update); the limit stops the run at once.
    """

    max_in_row: int = 10
    """Consecutive non-finite losses tolerated (each skips its update)."""

    check_every: int = 100
    """Updates between reads of the device-side counts (fused optimizer only; each read waits
    for the device)."""

    skipped: int = field(default=0, init=False)
    """Updates skipped so far (after the last read, with a fused optimizer)."""

    _in_row: int = field(default=0, init=False, repr=False)
    _counts: Tensor | None = field(default=None, init=False, repr=False)  # (3,) long

    def skip_on_device(
        self, optimizer: torch.optim.Optimizer, finite: Tensor, first_of_window: bool
    ) -> Tensor:
        """Hand `optimizer` "this update is not finite" as a device flag (`found_inf`), OR-ed
        over the micro-batches of one accumulation window, and count on the device. Returns
        the total skipped so far (a device tensor, for logging)."""
        bad = (~finite).to(torch.float32)
        previous = getattr(optimizer, "found_inf", None)
        flag = bad if first_of_window or previous is None else previous.maximum(bad)
        optimizer.found_inf = flag  # type: ignore[attr-defined]  # read by fused Adam(W).step
        if self._counts is None or self._counts.device != finite.device:
            self._counts = torch.zeros(3, dtype=torch.long, device=finite.device)
        run, longest, total = self._counts.unbind()
        run = torch.where(finite, 0, run + 1)
        self._counts = torch.stack([run, longest.maximum(run), total + (~finite).long()])
        return self._counts[2]

    def skip_on_host(self, finite: Tensor, step: int, detail: str = "") -> bool:
        """Read `finite` back: True = skip this update. Raises at `max_in_row` in a row."""
        if bool(finite):
            self._in_row = 0
            return False
        self._in_row += 1
        self.skipped += 1
        if self._in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"{self._in_row} consecutive non-finite losses at step {step}{detail}; lower "
                "the learning rate or check the data"
            )
        return True

    def check(self, step: int) -> None:
        """The periodic host read of the device-side counts (nothing to do without them)."""
        if self._counts is None:
            return
        _, longest, total = (int(v) for v in self._counts.tolist())
        self.skipped = total
        if longest >= self.max_in_row:
            raise NonFiniteLossError(
                f"{longest} consecutive non-finite losses by step {step} (their updates were "
                "skipped); lower the learning rate or check the data"
            )
