"""The category term across 2 gloo processes with uneven batches, under real DDP, against one
process that sees the whole batch (cases in category_ddp_cases.py). The ranks run as a
subprocess script (torch.multiprocessing spawn), never inside pytest's own process.

Convention: every rank computes the same global loss L (a mean over the anchors of the whole
gathered batch). all_gather's backward sums over the ranks, so a rank's own rows (and inputs)
receive exactly WORLD * dL/dx; DDP then averages the parameter gradients over the WORLD ranks,
which leaves exactly dL/dtheta: the single-process gradient.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)

CASES_FILE = Path(__file__).with_name("category_ddp_cases.py")


def _cases() -> Any:
    spec = importlib.util.spec_from_file_location("category_ddp_cases", CASES_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp_category")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(CASES_FILE), str(out), str(port)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _compare(name: str, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    cases = _cases()
    case = cases.CASES[name]()
    reference = cases.run(case, rank=None)
    C = case["clones"]
    for rank, results in enumerate(ranks):
        got = results[name]
        rows = slice(sum(case["utterances"][:rank]) * C, sum(case["utterances"][: rank + 1]) * C)
        for mine, ref in zip(got["steps"], reference["steps"], strict=True):
            torch.testing.assert_close(mine["loss"], ref["loss"], atol=1e-6, rtol=0)
            for key in ("num_anchors", "cross", "reason", "num_pseudo"):
                assert int(mine[key]) == int(ref[key]), key
            # inputs: WORLD x the gradient of the global loss (all_gather's backward sums)
            torch.testing.assert_close(
                mine["x_grad"] / cases.WORLD, ref["x_grad"][rows], atol=1e-6, rtol=0
            )
            # parameters: after DDP's averaging, exactly the single-process gradient
            assert mine["param_grads"].keys() == ref["param_grads"].keys()
            for key, grad in ref["param_grads"].items():
                assert grad.abs().max() > 0, key  # every parameter really gets a gradient
                torch.testing.assert_close(mine["param_grads"][key], grad, atol=1e-6, rtol=0)
        for key, buffer in reference["buffers"].items():
            torch.testing.assert_close(got["buffers"][key], buffer, atol=1e-6, rtol=0)
    return reference


def test_uneven_ranks_equal_one_process_with_the_whole_batch(ranks: list[dict[str, Any]]) -> None:
    reference = _compare("uneven", ranks)  # 3 rows on rank 0, 7 on rank 1
    step = reference["steps"][0]
    # labels 0, 1, -1, 0, 2, 1, -1, 2, 0, 1: classes of 3, 3 and 2 rows -> 8 anchors, and
    # (one clone each) every positive pair is across utterances: 3*2 + 3*2 + 2*1 = 14
    assert int(step["num_anchors"]) == 8
    assert int(step["cross"]) == 14
    assert int(step["reason"]) == 0


def test_memory_and_teacher_prototypes_stay_equal_across_uneven_ranks(
    ranks: list[dict[str, Any]],
) -> None:
    reference = _compare("memory", ranks)  # 2 and 3 utterances x 2 clones, 3 steps
    buffers = reference["buffers"]
    # 3 steps x 10 rows through 12 slots: 30 % 12 = the write position; all slots filled
    assert bool(buffers["objective.memory.valid"].all())
    assert buffers["objective.prototypes.initialised"].tolist() == [True, True, True]
    assert any(int(step["num_pseudo"]) > 0 for step in reference["steps"])
