"""The category term under DDP: cases shared by the 2-process gloo run and its single-process
reference (tests/losses/test_contrastive_ddp.py). Run as a script it spawns the ranks:

    python tests/losses/category_ddp_cases.py OUT_DIR PORT

A tiny "student" (Linear) feeds `PretrainObjective.category_term`; both are wrapped in
DistributedDataParallel, so the gradients compared are the ones DDP leaves after averaging.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from emotion_ssl.losses import ObjectiveSettings, PretrainObjective

D = 6
WORLD = 2


class Net(nn.Module):
    """student (Linear) -> token (R, 1, D) -> the category term; forward returns the loss
    output and the number of pseudo-labelled clones."""

    def __init__(self, **objective: Any) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.student = nn.Linear(D, D)
        self.objective = PretrainObjective(
            D, ObjectiveSettings(top_k=1, category_weight=1.0, projection_dim=4, **objective)
        )

    def forward(self, x: Tensor, labels: Tensor, clones: int, teacher_x: Tensor | None) -> Any:
        tokens = self.student(x).unsqueeze(1)  # (R, 1, D)
        teacher = None
        if teacher_x is not None:
            with torch.no_grad():  # stands for the EMA teacher: no gradient
                teacher = self.student(teacher_x).unsqueeze(1)  # (B, 1, D)
        return self.objective.category_term(tokens, labels, clones, 0, teacher)


def uneven_case() -> dict[str, Any]:
    """10 clips, one clone each, rank 0 holds 3 and rank 1 holds 7 (the required case)."""
    g = torch.Generator().manual_seed(1)
    return {
        "objective": {},
        "clones": 1,
        "utterances": [3, 7],
        "steps": [
            {
                "x": torch.randn(10, D, generator=g),
                "labels": torch.tensor([0, 1, -1, 0, 2, 1, -1, 2, 0, 1]),
                "teacher_x": None,
            }
        ],
    }


def memory_case() -> dict[str, Any]:
    """2 clones, 2 and 3 utterances per rank, own clones left out of the keys, a memory of 12
    rows and teacher-side pseudo-labels, over 3 steps (the memory fills, then wraps)."""
    g = torch.Generator().manual_seed(2)
    steps = []
    for labels in ([0, -1, 1, 0, -1], [1, -1, 0, 1, 2], [-1, 2, 0, -1, 1]):
        steps.append(
            {
                "x": torch.randn(10, D, generator=g),
                "labels": torch.tensor(labels),
                "teacher_x": torch.randn(5, D, generator=g),
            }
        )
    return {
        "objective": {
            "category_clone_positives": False,
            "category_memory_size": 12,
            "num_classes": 3,
            "pseudo_labels": True,
            "pseudo_label_threshold": 0.0,
            "pseudo_label_warmup_steps": 0,
            "prototype_momentum": 0.5,
        },
        "clones": 2,
        "utterances": [2, 3],
        "steps": steps,
    }


CASES = {"uneven": uneven_case, "memory": memory_case}


def run(case: dict[str, Any], rank: int | None) -> dict[str, Any]:
    """Run every step of `case`: as one process over the whole batch (rank None) or as
    `rank` of a DDP group over its share. Returns what the test compares."""
    C = case["clones"]
    # fp64 throughout: the comparisons are exact to 1e-6 (fp32 rounding alone, amplified by
    # the 1 / temperature scale, reaches a few 1e-6 on these gradients)
    net: nn.Module = Net(**case["objective"]).double()
    local = net
    if rank is not None:
        # buffers are not broadcast: the ranks must keep memory and prototypes equal alone
        net = nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
    results: dict[str, Any] = {"steps": []}
    for step in case["steps"]:
        x, labels, teacher_x = step["x"], step["labels"], step["teacher_x"]
        if rank is not None:  # this rank's utterances (and their clones)
            start = sum(case["utterances"][:rank])
            count = case["utterances"][rank]
            labels = labels[start : start + count]
            x = x[start * C : (start + count) * C]
            teacher_x = None if teacher_x is None else teacher_x[start : start + count]
        x = x.double().requires_grad_(True)
        teacher_x = None if teacher_x is None else teacher_x.double()
        local.zero_grad()
        out, num_pseudo = net(x, labels, C, teacher_x)
        out.loss.backward()  # DDP averages the parameter gradients over the ranks here
        results["steps"].append(
            {
                "loss": out.loss.detach(),
                "num_anchors": out.num_anchors,
                "cross": out.cross_utterance_positives,
                "reason": out.skip_reason,
                "num_pseudo": num_pseudo,
                "x_grad": x.grad,
                "param_grads": {n: p.grad.clone() for n, p in local.named_parameters()},
            }
        )
    results["buffers"] = {n: b.clone() for n, b in local.named_buffers()}
    return results


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results = {name: run(make(), rank) for name, make in CASES.items()}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=WORLD, join=True)
