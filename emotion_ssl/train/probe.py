"""Linear-probe evaluation (SPEC section 7): a small head on frozen frame features, every fold.

Head: Linear(D -> 256) -> ReLU -> mean over valid frames -> Linear(256 -> classes); RMSprop
(lr 5e-4, momentum 0.9) with a cyclic learning rate up to 1e-3, batch 128, 100 epochs, 20% of
the training side held out to choose the epoch with the best validation UA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.data.splits import Holdout, ValidSplit, holdout
from emotion_ssl.models.config import SAMPLE_RATE
from emotion_ssl.train.metrics import Scores, classification_scores

logger = logging.getLogger(__name__)


class ProbeHead(nn.Module):
    """Linear(D, hidden) -> ReLU -> masked mean over frames -> Linear(hidden, classes)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, frames: Tensor, padding_mask: Tensor) -> Tensor:
        """frames: (B, T, D); padding_mask: (B, T) True = padding -> logits (B, classes)"""
        h = F.relu(self.proj(frames)).masked_fill(padding_mask.unsqueeze(-1), 0.0)
        count = (~padding_mask).sum(dim=1, keepdim=True).clamp_min(1)
        return self.out(h.sum(dim=1) / count)


@dataclass
class ProbeConfig:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-4
    max_lr: float = 1e-3
    momentum: float = 0.9
    valid_fraction: float = 0.2
    # whole training speakers held out for validation (the test fold holds other speakers);
    # "class": a stratified share over the same speakers (before: flatters the chosen epoch)
    valid_split: ValidSplit = "speaker"
    hidden: int = 256
    seed: int = 0


def _pad(features: Sequence[np.ndarray], index: np.ndarray) -> tuple[Tensor, Tensor]:
    """Rows `index` of a list of (T_i, D) arrays -> (B, T, D) float32, padding mask (B, T)."""
    lengths = [features[i].shape[0] for i in index]
    out = torch.zeros(len(index), max(lengths), features[index[0]].shape[1])
    for row, i in enumerate(index):
        out[row, : lengths[row]] = torch.from_numpy(np.asarray(features[i], dtype=np.float32))
    mask = torch.arange(out.size(1)).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return out, mask


def _batches(features: Sequence[np.ndarray], index: np.ndarray, size: int) -> list[np.ndarray]:
    """Batches of similar lengths (little padding), in the order of `index` chunks."""
    ordered = index[np.argsort([features[i].shape[0] for i in index], kind="stable")]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


@torch.no_grad()
def predict(head: ProbeHead, features: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
    head.eval()
    index = np.arange(len(features))
    predictions = np.zeros(len(features), dtype=np.int64)
    for batch in _batches(features, index, batch_size):
        frames, mask = _pad(features, batch)
        predictions[batch] = head(frames, mask).argmax(dim=-1).numpy()
    return predictions


def split_validation(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    speakers: Sequence[object] | None = None,
    by: ValidSplit = "speaker",
) -> Holdout:
    """About `fraction` of the clips go to validation: whole speakers (by="speaker", when
    speakers are given) or a stratified share of each class (`emotion_ssl.data.splits`)."""
    return holdout([int(v) for v in labels], speakers, fraction, seed, by)


def train_probe(
    features: Sequence[np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    config: ProbeConfig,
    speakers: Sequence[object] | None = None,
) -> tuple[ProbeHead, dict[str, float]]:
    """Train the head; returns the epoch with the best validation UA and its scores.
    `speakers` (one per clip) lets the validation side hold out whole speakers."""
    torch.manual_seed(config.seed)
    labels = np.asarray(labels, dtype=np.int64)
    split = split_validation(
        labels, config.valid_fraction, config.seed, speakers, config.valid_split
    )
    train_idx, valid_idx = split.train, split.valid
    head = ProbeHead(features[0].shape[1], num_classes, config.hidden)
    optimizer = torch.optim.RMSprop(head.parameters(), lr=config.lr, momentum=config.momentum)
    steps_per_epoch = max(1, -(-len(train_idx) // config.batch_size))
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=config.lr,
        max_lr=config.max_lr,
        step_size_up=max(1, 2 * steps_per_epoch),
        cycle_momentum=False,
    )
    target = torch.from_numpy(labels)
    rng = np.random.default_rng(config.seed)
    best: tuple[float, dict[str, Tensor], int] = (-1.0, {}, -1)
    for epoch in range(config.epochs):
        head.train()
        batches = _batches(features, rng.permutation(train_idx), config.batch_size)
        for b in rng.permutation(len(batches)):
            frames, mask = _pad(features, batches[b])
            loss = F.cross_entropy(head(frames, mask), target[batches[b]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        chosen = valid_idx if len(valid_idx) else train_idx
        pred = predict(head, [features[i] for i in chosen])
        ua = classification_scores(labels[chosen], pred, num_classes).ua
        if ua > best[0]:
            best = (ua, {k: v.clone() for k, v in head.state_dict().items()}, epoch)
    head.load_state_dict(best[1])
    head.eval()
    return head, {
        "valid_ua": best[0],
        "best_epoch": float(best[2]),
        "valid_clips": float(len(valid_idx)),
        "valid_by_speaker": float(split.by == "speaker"),
    }


def evaluate_fold(
    features: Sequence[np.ndarray],
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    num_classes: int,
    config: ProbeConfig,
    speakers: Sequence[object] | None = None,
) -> tuple[Scores, np.ndarray, dict[str, float]]:
    """Train on `train_idx`, test on `test_idx` -> scores, test predictions, training info.
    `speakers` (one per clip of `features`) lets validation hold out whole speakers."""
    head, info = train_probe(
        [features[i] for i in train_idx],
        labels[train_idx],
        num_classes,
        config,
        None if speakers is None else [speakers[i] for i in train_idx],
    )
    pred = predict(head, [features[i] for i in test_idx])
    return classification_scores(labels[test_idx], pred, num_classes), pred, info


def mfcc_statistics(audio: np.ndarray, n_mfcc: int = 20) -> np.ndarray:
    """Classic acoustic baseline: per-utterance mean and std of 20 MFCCs (+ log energy) ->
    (1, 42): one "frame" for the same probe head."""
    transform = _mfcc_transform(n_mfcc)
    wave = torch.from_numpy(np.asarray(audio, dtype=np.float32)).unsqueeze(0)
    mfcc = transform(wave)[0]  # (n_mfcc, frames)
    energy = torch.log(wave.unfold(1, 400, 160).pow(2).mean(-1) + 1e-10)  # (1, frames')
    stats = torch.cat([mfcc.mean(1), mfcc.std(1), energy.mean(1), energy.std(1)])
    return stats.unsqueeze(0).numpy()


_MFCC: dict[int, nn.Module] = {}


def _mfcc_transform(n_mfcc: int) -> nn.Module:
    import torchaudio

    if n_mfcc not in _MFCC:
        _MFCC[n_mfcc] = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE,
            n_mfcc=n_mfcc,
            melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40},
        )
    return _MFCC[n_mfcc]
