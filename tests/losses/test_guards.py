"""NonFiniteGuard: one policy (skip the update, stop after `max_in_row` in a row), whether the
skip happens on the host or inside a fused optimizer's step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emotion_ssl.losses import NonFiniteGuard, NonFiniteLossError

FINITE, NAN = torch.tensor(True), torch.tensor(False)


def test_on_the_host_each_nonfinite_loss_skips_and_a_run_of_them_stops() -> None:
    guard = NonFiniteGuard(max_in_row=3)
    assert [guard.skip_on_host(f, step) for step, f in enumerate([NAN, NAN, FINITE, NAN])] == [
        True,
        True,
        False,  # a finite loss ends the run of them
        True,
    ]
    assert guard.skipped == 3
    assert guard.skip_on_host(NAN, 4) is True
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses at step 5"):
        guard.skip_on_host(NAN, 5)


def test_on_the_device_the_optimizer_gets_the_flag_and_checks_read_the_counts() -> None:
    guard = NonFiniteGuard(max_in_row=2, check_every=10)
    optimizer = SimpleNamespace()
    # an accumulation window of two micro-batches: one NaN flags the whole update
    guard.skip_on_device(optimizer, NAN, first_of_window=True)  # type: ignore[arg-type]
    guard.skip_on_device(optimizer, FINITE, first_of_window=False)  # type: ignore[arg-type]
    assert optimizer.found_inf.item() == 1.0
    total = guard.skip_on_device(optimizer, FINITE, first_of_window=True)  # type: ignore[arg-type]
    assert optimizer.found_inf.item() == 0.0 and total.item() == 1
    guard.check(3)  # longest run 1 < 2: the run goes on
    assert guard.skipped == 1
    for _ in range(2):
        guard.skip_on_device(optimizer, NAN, first_of_window=True)  # type: ignore[arg-type]
    assert guard.skipped == 1  # nothing read back until the next check
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite losses by step 10"):
        guard.check(10)
    assert guard.skipped == 3
