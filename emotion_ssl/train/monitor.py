"""A representation monitor for pretraining: the online evaluation SSL libraries run.

Every `every_n_steps` optimizer updates (and at update 0, before training, and at the end) the
student encodes a small fixed set of clips and the monitor logs, for its last and a middle
block, how much emotion the representation holds and whether it is collapsing:

    knn_acc       cosine k-nearest-neighbour accuracy, neighbours from other speakers only
    probe_ua      UA of a closed-form ridge classifier, leave-one-speaker-out
    rankme_utt    effective rank (RankMe) of the clip embeddings (mean over valid frames)
    rankme_frame  effective rank of a fixed subsample of frame embeddings
    var_ratio     variance of the clip means / mean within-clip frame variance (summed over dims)

The first two need labels; the last three run on any clips. The pure metric functions are
usable on their own; `RepresentationMonitor` is the Lightning callback (`--monitor.*` in
`emotion-ssl pretrain`). How to read the curves: docs/pretraining.md, "The representation
monitor".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emotion_ssl.data.audio import TARGET_RATE, load_audio
from emotion_ssl.data.manifest import ManifestEntry, read_manifest
from emotion_ssl.train.callbacks import run_folder, write_csv_atomically
from emotion_ssl.train.metrics import classification_scores
from emotion_ssl.utils.outputs import atomic_write

logger = logging.getLogger(__name__)

LABELLED_METRICS = ("knn_acc", "probe_ua")
LABEL_FREE_METRICS = ("rankme_utt", "rankme_frame", "var_ratio")
METRIC_TITLES = {
    "knn_acc": "kNN accuracy (other speakers' clips)",
    "probe_ua": "ridge probe UA (leave one speaker out)",
    "rankme_utt": "RankMe, clip embeddings",
    "rankme_frame": "RankMe, frame embeddings",
    "var_ratio": "between / within-clip variance",
}


# --------------------------------------------------------------------------- the metrics
def knn_accuracy(embeddings: Tensor, labels: Tensor, groups: Tensor, k: int = 5) -> float:
    """Cosine k-nearest-neighbour accuracy where a clip's neighbours come only from other
    groups (speakers): leave-one-speaker-out, so same-speaker similarity cannot answer.

    embeddings: (N, D); labels: (N,) long >= 0; groups: (N,) long, e.g. speaker ids.
    Majority vote over the k most similar clips of other groups (fewer when some clip has
    fewer than k of them); a tie goes to the class with the larger summed similarity.
    Returns NaN when no clip has a neighbour in another group (one group only).
    """
    z = F.normalize(embeddings.double(), dim=1)
    similarity = z @ z.t()  # (N, N)
    same_group = groups[:, None] == groups[None, :]  # (N, N), includes the clip itself
    available = int((~same_group).sum(dim=1).min()) if len(groups) else 0
    if available == 0:
        return float("nan")
    k = min(k, available)
    values, index = similarity.masked_fill(same_group, -math.inf).topk(k, dim=1)  # (N, k)
    num_classes = int(labels.max()) + 1
    neighbour_labels = labels[index]  # (N, k)
    votes = torch.zeros(len(labels), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(values))
    # tie-break: summed similarity, scaled below one vote (|sum| <= votes <= k)
    votes.scatter_add_(1, neighbour_labels, values / (2 * k + 1))
    return float((votes.argmax(dim=1) == labels).double().mean())


def ridge_probe_ua(
    features: Tensor, labels: Tensor, groups: Tensor, num_classes: int, alpha: float = 1.0
) -> float:
    """UA (mean per-class recall) of a closed-form ridge classifier, leave-one-group-out.

    features: (N, D) clip embeddings; labels: (N,) long in [0, num_classes); groups: (N,)
    long. For each group: standardise the other groups' features (their mean and std; a
    constant feature becomes 0), regress one-hot targets with an intercept, minimising
    mean squared error + alpha * ||W||^2, and predict the held-out group by the arg-max.
    Returns NaN with fewer than two groups.
    """
    x_all = features.double()
    unique = torch.unique(groups)
    if len(unique) < 2:
        return float("nan")
    predictions = torch.empty(len(labels), dtype=torch.long)
    for group in unique:
        test = groups == group
        x, y = x_all[~test], F.one_hot(labels[~test], num_classes).double()  # (n, D), (n, C)
        mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
        # a (near-)constant feature carries nothing: scale it to exactly 0, never divide by ~0
        scale = torch.where(std > 1e-8 * (1.0 + mean.abs()), std, torch.full_like(std, math.inf))
        xs = (x - mean) / scale
        y_mean = y.mean(dim=0)
        n, D = xs.shape
        if n <= D:  # dual form: an (n, n) solve
            gram = xs @ xs.t() + alpha * n * torch.eye(n, dtype=xs.dtype)
            weights = xs.t() @ torch.linalg.solve(gram, y - y_mean)
        else:  # primal form: a (D, D) solve
            gram = xs.t() @ xs + alpha * n * torch.eye(D, dtype=xs.dtype)
            weights = torch.linalg.solve(gram, xs.t() @ (y - y_mean))
        scores = ((x_all[test] - mean) / scale) @ weights + y_mean  # (n_test, C)
        predictions[test] = scores.argmax(dim=1)
    return classification_scores(labels.numpy(), predictions.numpy(), num_classes).ua


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the L1-normalised singular values.

    embeddings: (N, D), not centred (as in the paper). Between 1 (rank one) and min(N, D)
    (all singular values equal): an identity matrix gives D.
    """
    x = embeddings.double()
    # singular values from the smaller Gram matrix: 4x faster than svdvals at (4096, 768),
    # equal to ~1e-12 in fp64
    gram = x.t() @ x if x.shape[0] >= x.shape[1] else x @ x.t()
    singular = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    p = singular / singular.sum().clamp_min(1e-30) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def clip_statistics(frames: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-clip mean and within-clip variance of frame embeddings.

    frames: (B, T, D); padding_mask: (B, T) True = padding ->
    means (B, D) over valid frames, within (B,) = sum over dims of the frame variance around
    the clip mean (population variance: divided by the valid frame count).
    """
    valid = (~padding_mask).unsqueeze(-1).to(frames.dtype)  # (B, T, 1)
    count = valid.sum(dim=1).clamp_min(1.0)  # (B, 1)
    means = (frames * valid).sum(dim=1) / count  # (B, D)
    squared = ((frames - means.unsqueeze(1)) ** 2 * valid).sum(dim=(1, 2))  # (B,)
    return means, squared / count.squeeze(1)


def variance_ratio(means: Tensor, within: Tensor) -> float:
    """Between-clip / within-clip variance: the variance of the clip means across clips
    (population variance, summed over dims) over the mean within-clip variance (`within`,
    from `clip_statistics`). Near 0: every clip looks alike (clip information gone); large:
    frames mostly carry the clip's identity.

    means: (N, D); within: (N,).
    """
    between = means.double().var(dim=0, unbiased=False).sum()
    mean_within = within.double().mean()
    if mean_within <= 0:
        return math.inf if between > 0 else math.nan
    return float(between / mean_within)


# ----------------------------------------------------------------------- the clip set
@dataclass
class MonitorClips:
    """The clips the monitor encodes, padded once into batches (longest first).

    batches: (waveforms (B, S) float32, lengths (B,) long) on the host; labels: (N,) long in
    batch order, or None (label-free); groups: (N,) long speaker index; label_names: class
    names by index; source: where the clips came from (for the plot title and the logs).
    """

    batches: list[tuple[Tensor, Tensor]]
    labels: Tensor | None
    groups: Tensor
    label_names: list[str]
    source: str

    @property
    def num_clips(self) -> int:
        return len(self.groups)

    @property
    def seconds(self) -> float:
        return sum(float(lengths.sum()) for _, lengths in self.batches) / TARGET_RATE


def select_entries(entries: Sequence[ManifestEntry], max_clips: int) -> list[ManifestEntry]:
    """At most `max_clips` entries, deterministically and spread over speakers and labels:
    entries grouped by (speaker, label), each group sorted by key, then taken one per group
    in turn (groups in sorted order) until `max_clips` are chosen."""
    by_group: dict[tuple[str, str], list[ManifestEntry]] = {}
    for entry in entries:
        by_group.setdefault((str(entry.speaker), str(entry.label)), []).append(entry)
    queues = [sorted(by_group[g], key=lambda e: e.key) for g in sorted(by_group)]
    chosen: list[ManifestEntry] = []
    depth = 0
    while len(chosen) < max_clips and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_clips:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def centre_crop(waveform: np.ndarray, max_samples: int) -> np.ndarray:
    """The middle `max_samples` of a (S,) waveform (all of it when shorter)."""
    if waveform.shape[0] <= max_samples:
        return waveform
    start = (waveform.shape[0] - max_samples) // 2
    return waveform[start : start + max_samples]


def load_clips(
    entries: Sequence[ManifestEntry],
    max_seconds: float,
    min_samples: int,
    use_labels: bool,
    source: str,
    batch_samples: int = 64 * TARGET_RATE,
) -> MonitorClips:
    """Read `entries` once (16 kHz mono, centre-cropped to `max_seconds`), drop clips shorter
    than `min_samples` (the encoder's one frame), pad into batches of at most `batch_samples`
    padded samples. With `use_labels` every entry needs a label; a missing speaker counts as
    a speaker of its own."""
    max_samples = max(1, int(max_seconds * TARGET_RATE))
    if use_labels and any(e.label is None for e in entries):
        raise ValueError(f"{source}: with use_labels every entry needs a label")
    waves = [centre_crop(load_audio(e.path), max_samples) for e in entries]
    kept = [i for i, w in enumerate(waves) if w.shape[0] >= min_samples]
    if not kept:
        raise ValueError(
            f"{source}: none of its {len(entries)} chosen clips is long enough for the encoder "
            f"({min_samples} samples)"
        )
    kept.sort(key=lambda i: -waves[i].shape[0])  # longest first: little padding
    label_names = sorted({str(entries[i].label) for i in kept}) if use_labels else []
    speakers = sorted({entries[i].speaker or f"key:{entries[i].key}" for i in kept})
    groups = torch.tensor(
        [speakers.index(entries[i].speaker or f"key:{entries[i].key}") for i in kept]
    )
    labels = (
        torch.tensor([label_names.index(str(entries[i].label)) for i in kept])
        if use_labels
        else None
    )
    batches: list[tuple[Tensor, Tensor]] = []
    start = 0
    while start < len(kept):
        longest = waves[kept[start]].shape[0]
        size = max(1, batch_samples // longest)
        rows = kept[start : start + size]
        padded = torch.zeros(len(rows), longest)  # (B, S)
        for row, i in enumerate(rows):
            padded[row, : waves[i].shape[0]] = torch.from_numpy(waves[i])
        batches.append((padded, torch.tensor([waves[i].shape[0] for i in rows])))
        start += size
    return MonitorClips(batches, labels, groups, label_names, source)


# ------------------------------------------------------------------------- the callback
class RepresentationMonitor(L.Callback):
    """Online evaluation of the student during pretraining (rank 0 only).

    Encodes a fixed set of clips with the student in eval mode at update 0 (the random-init
    reference), every `every_n_steps` updates and at the end of training, and logs
    `monitor/<layer>/<metric>` (metrics in `emotion_ssl.train.monitor`) through the trainer's
    loggers at the current update. `monitor.csv` (one row per evaluation) and `monitor.png`
    (a panel per metric, a line per layer) are rewritten in the run folder at every
    evaluation, so a killed run keeps them.

    Args:
        manifest: JSONL manifest of labelled clips whose speakers are not in the training
            data; gives all five metrics. None: a fixed sample of the data module's
            valid_manifest (else train_manifest), label-free metrics only. A manifest without
            labels also gives the label-free metrics only.
        every_n_steps: optimizer updates between evaluations; 0 turns the monitor off.
        max_clips: at most this many clips, chosen deterministically and spread over speakers
            and labels; read once, when training starts.
        max_seconds: each clip is centre-cropped to at most this long.
        k: neighbours of the kNN accuracy.
        layers: student blocks to evaluate: "last", "middle" (block (n - 1) // 2 of n,
            0-based over prenet then shared blocks) or a 0-based block index ("3").
    """

    frame_sample = 4096
    """Frames (at most) in the frame-level RankMe: evenly spaced over each clip's frames."""
    draw_budget = 0.02
    """Largest share of the run's time spent drawing monitor.png (it is redrawn at an
    evaluation only when its last drawing is at least 1 / draw_budget times its cost old)."""

    def __init__(
        self,
        manifest: str | None = None,
        every_n_steps: int = 100,
        max_clips: int = 256,
        max_seconds: float = 4.0,
        k: int = 5,
        layers: Sequence[str] = ("last", "middle"),
    ) -> None:
        if every_n_steps < 0 or max_clips < 1 or max_seconds <= 0 or k < 1:
            raise ValueError(
                "the monitor needs every_n_steps >= 0, max_clips >= 1, max_seconds > 0 and "
                f"k >= 1; got {every_n_steps}, {max_clips}, {max_seconds}, {k}"
            )
        self.manifest = manifest
        self.every_n_steps = every_n_steps
        self.max_clips = max_clips
        self.max_seconds = max_seconds
        self.k = k
        self.layers = list(layers)
        self.rows: list[dict[str, float]] = []
        self.clips: MonitorClips | None = None
        self._blocks: dict[str, int] = {}
        self._last_step = -1
        self.eval_seconds: list[float] = []
        """Wall time of each evaluation: encoding, metrics, logging and monitor.csv (drawing
        monitor.png is `draw_seconds`); benchmarks/monitor_overhead.py reads both."""
        self._drawn_at = -math.inf  # perf_counter() after the last drawing of monitor.png
        self.draw_seconds = 0.0
        """Wall time of the last drawing of monitor.png."""
        self._drawn_rows = 0

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.every_n_steps or not trainer.is_global_zero:
            return
        if self._sharded(trainer):
            logger.warning("the representation monitor is off under sharded training (FSDP)")
            self.every_n_steps = 0
            return
        student = _student(pl_module)
        self._blocks = resolve_layers(self.layers, student.config.num_layers)
        self.clips = self._read_clips(trainer, student.min_samples)
        logger.info(
            "representation monitor: %d clips (%.0f s) from %s, %s, layers %s, every %d updates",
            self.clips.num_clips,
            self.clips.seconds,
            self.clips.source,
            "labelled" if self.clips.labels is not None else "label-free metrics only",
            self._blocks,
            self.every_n_steps,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the reference point: update 0 is the untrained student (a resumed run that already
        # evaluated this update skips it)
        step = trainer.global_step
        if not any(row["step"] == step for row in self.rows):
            self._evaluate(trainer, pl_module)
        self._last_step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        # once per optimizer update, not per micro-batch
        if step != self._last_step and self.every_n_steps and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)
        self._last_step = step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not any(row["step"] == step for row in self.rows):
            self._evaluate(trainer, pl_module)
        if self.clips is not None and self._drawn_rows != len(self.rows):
            self.write(trainer, draw=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.clips is not None and self._drawn_rows != len(self.rows):
            self.write(trainer, draw=True)  # a stopped run's plot shows every evaluation

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    # --------------------------------------------------------------- the work
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.clips is None:  # off, another rank, or not set up for fitting
            return
        start = time.perf_counter()
        with trainer.precision_plugin.forward_context():  # the training precision
            metrics = self.evaluate(pl_module)
        step = trainer.global_step
        for each in trainer.loggers:
            each.log_metrics(metrics, step=step)  # rank 0 only: no collective, no self.log
        self.rows.append({"step": float(step), **metrics})
        self.rows[-1]["seconds"] = time.perf_counter() - start  # encoding and metrics
        # the plot is redrawn when its last drawing is old enough that drawing costs at most
        # `draw_budget` of the run's time (on a CPU one drawing costs a few tiny updates)
        stale = (time.perf_counter() - self._drawn_at) * self.draw_budget >= self.draw_seconds
        self.write(trainer, draw=stale)
        drawing = self.draw_seconds if stale else 0.0
        self.eval_seconds.append(time.perf_counter() - start - drawing)

    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Encode the clips with the student in eval mode and compute every metric ->
        {"monitor/<layer>/<metric>": value}. The student's train/eval mode is restored."""
        assert self.clips is not None
        clips = self.clips
        student = _student(pl_module)
        was_training = student.training
        student.eval()
        per_clip = max(1, -(-self.frame_sample // clips.num_clips))
        means: dict[str, list[Tensor]] = {name: [] for name in self._blocks}
        within: dict[str, list[Tensor]] = {name: [] for name in self._blocks}
        frames: dict[str, list[Tensor]] = {name: [] for name in self._blocks}
        try:
            for waveforms, lengths in clips.batches:
                out = student(waveforms.to(pl_module.device), lengths, return_layers=True)
                assert out.layers is not None
                padding = out.padding_mask
                at_row, at_frame = frame_sample_index(student.frame_lengths(lengths), per_clip)
                at_row, at_frame = at_row.to(padding.device), at_frame.to(padding.device)
                for name, block in self._blocks.items():
                    h = out.layers[block].float()  # (B, T, D)
                    m, w = clip_statistics(h, padding)
                    means[name].append(m.cpu())
                    within[name].append(w.cpu())
                    frames[name].append(h[at_row, at_frame].cpu())  # (F_b, D)
        finally:
            student.train(was_training)
        metrics: dict[str, float] = {}
        for name in self._blocks:
            utt = torch.cat(means[name])  # (N, D)
            if clips.labels is not None:
                metrics[f"monitor/{name}/knn_acc"] = knn_accuracy(
                    utt, clips.labels, clips.groups, self.k
                )
                metrics[f"monitor/{name}/probe_ua"] = ridge_probe_ua(
                    utt, clips.labels, clips.groups, len(clips.label_names)
                )
            metrics[f"monitor/{name}/rankme_utt"] = rankme(utt)
            metrics[f"monitor/{name}/rankme_frame"] = rankme(torch.cat(frames[name]))
            metrics[f"monitor/{name}/var_ratio"] = variance_ratio(utt, torch.cat(within[name]))
        return metrics

    def write(self, trainer: L.Trainer, draw: bool = True) -> None:
        """`monitor.csv` (and, with `draw`, `monitor.png`) in the run folder, rank 0 only."""
        if not trainer.is_global_zero or not self.rows:
            return
        out = run_folder(trainer)  # not trainer.log_dir: a collective, and this is rank 0 only
        out.mkdir(parents=True, exist_ok=True)
        keys = ["step", *sorted({k for r in self.rows for k in r} - {"step", "seconds"})]
        keys.append("seconds")
        write_csv_atomically(out / "monitor.csv", self.rows, keys)
        if not draw:
            return
        start = time.perf_counter()
        clips = self.clips
        labelled = clips is not None and clips.labels is not None
        chance = 1.0 / len(clips.label_names) if clips is not None and labelled else None
        source = f"{clips.num_clips} clips of {Path(clips.source).name}" if clips else ""
        plot_monitor(self.rows, out / "monitor.png", chance, source)
        self._drawn_at = time.perf_counter()
        self.draw_seconds = self._drawn_at - start
        self._drawn_rows = len(self.rows)

    # ---------------------------------------------------------------- helpers
    def _read_clips(self, trainer: L.Trainer, min_samples: int) -> MonitorClips:
        path: str | None = self.manifest
        use_labels = True
        if path is None:
            data = getattr(trainer, "datamodule", None)
            path = getattr(data, "valid_manifest", None) or getattr(data, "train_manifest", None)
            if path is None:
                raise ValueError(
                    "the representation monitor needs clips: give --monitor.manifest (or a data "
                    "module with a valid_manifest or train_manifest), or turn it off with "
                    "--monitor.every_n_steps 0"
                )
            use_labels = False  # training speakers: label-free metrics only
        entries = read_manifest(path)
        labelled = [e for e in entries if e.label is not None]
        if use_labels and len({e.label for e in labelled}) >= 2:
            entries = labelled  # the unlabelled ones cannot be scored
        else:
            use_labels = False  # no classes to tell apart: label-free metrics only
        entries = select_entries(entries, self.max_clips)
        if not entries:
            raise ValueError(f"{path}: the monitor's manifest holds no clips")
        return load_clips(entries, self.max_seconds, min_samples, use_labels, str(path))

    @staticmethod
    def _sharded(trainer: L.Trainer) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        return isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy)


def _student(pl_module: L.LightningModule) -> Any:
    from emotion_ssl.models import EmotionEncoder

    student = getattr(pl_module, "student", None)
    if not isinstance(student, EmotionEncoder):
        raise TypeError(
            f"RepresentationMonitor needs a module with a `student` EmotionEncoder "
            f"(PretrainSystem); got {type(pl_module).__name__}"
        )
    return student


def resolve_layers(layers: Sequence[str], num_blocks: int) -> dict[str, int]:
    """Layer names -> 0-based block index: "last" = n - 1, "middle" = (n - 1) // 2, or an
    index ("3", "-2"); an index names itself "block<i>" in the logs."""
    if not layers:
        raise ValueError("monitor layers: give at least one of 'last', 'middle' or a block index")
    out: dict[str, int] = {}
    for layer in layers:
        text = str(layer).strip()
        if text == "last":
            out["last"] = num_blocks - 1
        elif text == "middle":
            out["middle"] = (num_blocks - 1) // 2
        else:
            try:
                index = int(text)
            except ValueError:
                raise ValueError(
                    f"monitor layer {layer!r}: use 'last', 'middle' or a block index"
                ) from None
            if not -num_blocks <= index < num_blocks:
                raise ValueError(
                    f"monitor layer {index} is not a block of this {num_blocks}-block encoder"
                )
            out[f"block{index % num_blocks}"] = index % num_blocks
    return out


def frame_sample_index(frame_lengths: Tensor, per_clip: int) -> tuple[Tensor, Tensor]:
    """Evenly spaced valid frames of each clip, at most `per_clip` each.

    frame_lengths: (B,) valid frames per clip -> (row index, frame index), each (F,) long.
    """
    rows: list[Tensor] = []
    cols: list[Tensor] = []
    for row, length in enumerate(frame_lengths.tolist()):
        n = min(int(length), per_clip)
        if n <= 0:
            continue
        cols.append(torch.linspace(0, length - 1, n).round().long())
        rows.append(torch.full((n,), row, dtype=torch.long))
    return torch.cat(rows), torch.cat(cols)


def plot_monitor(
    rows: list[dict[str, float]], path: Path, chance: float | None = None, source: str = ""
) -> None:
    """One panel per metric, one line per layer, x = optimizer update; the first point (update
    0) is the untrained student."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    present = {k for r in rows for k in r if k.startswith("monitor/")}
    metrics = [
        m
        for m in (*LABELLED_METRICS, *LABEL_FREE_METRICS)
        if any(k.endswith(f"/{m}") for k in present)
    ]
    layers = sorted({k.split("/")[1] for k in present}, key=lambda n: (n != "last", n))
    fig = Figure(figsize=(3.3 * len(metrics), 3.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for layer in layers:
            key = f"monitor/{layer}/{metric}"
            points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, ".-", label=layer)
        if metric in LABELLED_METRICS and chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.set_title(METRIC_TITLES[metric], fontsize=9)
        ax.set_xlabel("optimizer update (0 = random init)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"emotion-ssl representation monitor: {source}", fontsize=10)
    fig.tight_layout()
    with atomic_write(path, suffix=".png", sync=False) as tmp:  # redrawn every evaluation
        fig.savefig(tmp, dpi=100)
