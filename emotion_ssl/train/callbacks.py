"""Callbacks that write what people would rather look at than read."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch

from emotion_ssl.data.manifest import write_text_atomically
from emotion_ssl.utils.outputs import atomic_write


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's `log_dir` (runs/pretrain/version_N), else the Trainer's
    root folder. Read without `trainer.log_dir`, which broadcasts from rank 0 under DDP and so
    must run on every rank: called on rank 0 alone, it waits forever for the others."""
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


def write_csv_atomically(path: Path, rows: list[dict[str, float]], keys: list[str]) -> None:
    """rows (columns `keys`) as CSV at path, through a temporary file: a kill leaves the last
    complete one."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())


PLOTTED = ("train/loss", "train/frame_loss", "train/utterance_loss", "train/category_loss")


class LossCurves(L.Callback):
    """Records the training losses every `every_n_steps` updates and writes them into the run
    folder as training goes, so a run that is killed keeps its record: `losses.csv` at every
    logging interval (the Trainer's `log_every_n_steps`), and `losses.csv` with
    `loss_curves.png` whenever a checkpoint is saved, every `write_every_n_steps` updates and
    at the end."""

    def __init__(self, every_n_steps: int = 1, write_every_n_steps: int = 200) -> None:
        self.every_n_steps = every_n_steps
        self.write_every_n_steps = write_every_n_steps
        self.rows: list[dict[str, float]] = []
        self._last_step = -1
        self._plotted_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        metrics = trainer.callback_metrics
        row = {"step": float(step)}
        for key in PLOTTED:
            value = metrics.get(key)
            if isinstance(value, torch.Tensor):
                row[key] = float(value)
        if len(row) > 1:
            self.rows.append(row)
        if step and step % self.write_every_n_steps == 0:
            self.write(trainer)
        elif step and step % max(getattr(trainer, "log_every_n_steps", 50), 1) == 0:
            self.write(trainer, plot=False)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.global_step != self._plotted_step:  # once per step (a step's and last.ckpt)
            self.write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    def write(self, trainer: L.Trainer, plot: bool = True) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        out = run_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        keys = ["step", *[k for k in PLOTTED if any(k in r for r in self.rows)]]
        write_csv_atomically(out / "losses.csv", self.rows, keys)
        if not plot:
            return
        # a part that was never switched on (e.g. no category term) is left out of the plot
        shown = [k for k in keys[1:] if any(r.get(k, 0.0) != 0.0 for r in self.rows)]
        plot_loss_curves(self.rows, shown, out / "loss_curves.png")
        self._plotted_step = trainer.global_step


def plot_loss_curves(rows: list[dict[str, float]], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key.removeprefix("train/"))
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("loss")
    ax.set_title("emotion-ssl pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:  # savefig reads the format from the name
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
