"""A callback that a multi-process test adds to `emotion-ssl pretrain` (`--trainer.callbacks`).

Every rank writes what it saw to $RANK_RECORD_DIR: the global step and its own batch size after
each update, the logged `train/loss`, the anchors of the category term, and at the end its
teacher's weights. With RANK_RECORD_EXIT_RANK=r set, rank r exits (code 0) while its command
line is parsed, before joining the process group: a rank that never starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch


def _rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


class RankRecord(L.Callback):
    def __init__(self) -> None:
        if os.environ.get("RANK_RECORD_EXIT_RANK") == str(_rank()):
            sys.exit(0)
        self.out = Path(os.environ["RANK_RECORD_DIR"])
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        metrics = trainer.callback_metrics
        self.steps.append(
            {
                "global_step": trainer.global_step,
                "rows": int(batch.waveforms.size(0)),
                "labelled_rows": int((batch.labels >= 0).sum()),
                "loss": float(metrics["train/loss"]),
                "num_anchors": float(metrics.get("train/num_anchors", torch.tensor(-1.0))),
            }
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        rank = trainer.global_rank
        teacher = {k: v.detach().cpu() for k, v in pl_module.teacher.state_dict().items()}
        torch.save(teacher, self.out / f"teacher{rank}.pt")
        record = {"world_size": trainer.world_size, "rank": rank, "steps": self.steps}
        (self.out / f"rank{rank}.json").write_text(json.dumps(record))
