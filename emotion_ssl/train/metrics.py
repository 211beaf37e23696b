"""Classification metrics as emotion papers report them: WA, UA, WF1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass
class Scores:
    """wa: accuracy; ua: mean per-class recall (balanced accuracy); wf1: support-weighted F1.

    confusion[i, j] counts utterances of true class i predicted as j.
    """

    wa: float
    ua: float
    wf1: float
    confusion: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {"wa": self.wa, "ua": self.ua, "wf1": self.wf1}


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class."""
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"{true.shape[0]} labels but {pred.shape[0]} predictions")
    if true.size and (
        true.min() < 0 or pred.min() < 0 or max(true.max(), pred.max()) >= num_classes
    ):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (true, pred), 1)
    return out


def scores_from_confusion(confusion: np.ndarray) -> Scores:
    """WA, UA and WF1 from a confusion matrix. Classes absent from the truth do not count in
    UA (their recall is undefined); a class never predicted has precision 0 in its F1."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    correct = np.diag(confusion)
    total = support.sum()
    if total == 0:
        raise ValueError("no utterances to score")
    present = support > 0
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=present)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(correct), where=denom > 0)
    return Scores(
        wa=float(correct.sum() / total),
        ua=float(recall[present].mean()),
        wf1=float((f1 * support).sum() / total),
        confusion=confusion.astype(np.int64),
    )


def classification_scores(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> Scores:
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: str, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{share[i, j]:.2f}\n({counts[i, j]})",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
