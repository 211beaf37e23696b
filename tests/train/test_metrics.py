"""WA / UA / WF1 against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_ssl.train.metrics import classification_scores, confusion_matrix, plot_confusion


def test_hand_computed_scores() -> None:
    # true:  0 0 0 0 1 1 2 2 2 2 ; pred: 0 0 1 2 1 1 2 2 0 2
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 2, 2, 0, 2]
    s = classification_scores(y_true, y_pred, 3)
    assert s.confusion.tolist() == [[2, 1, 1], [0, 2, 0], [1, 0, 3]]
    # WA = 7 correct / 10
    assert s.wa == pytest.approx(0.7)
    # recalls 2/4, 2/2, 3/4 -> UA = (0.5 + 1 + 0.75) / 3 = 0.75
    assert s.ua == pytest.approx(0.75)
    # precisions 2/3, 2/3, 3/4; F1 = 2pr/(p+r): class0 2*(2/3)(1/2)/(7/6) = 4/7,
    # class1 2*(2/3)(1)/(5/3) = 4/5, class2 3/4; WF1 = (4*4/7 + 2*4/5 + 4*3/4)/10
    assert s.wf1 == pytest.approx((4 * 4 / 7 + 2 * 0.8 + 4 * 0.75) / 10)


def test_absent_and_never_predicted_classes() -> None:
    s = classification_scores([0, 0, 1], [0, 0, 0], 3)  # class 2 absent, class 1 never predicted
    assert s.wa == pytest.approx(2 / 3)
    assert s.ua == pytest.approx((1.0 + 0.0) / 2)  # class 2 has no recall: left out
    # class 0: p = 2/3, r = 1 -> F1 = 0.8 (support 2); class 1: F1 = 0 (support 1)
    assert s.wf1 == pytest.approx(2 * 0.8 / 3)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        confusion_matrix([0, 1], [0, 1, 1], 2)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_confusion_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cm.png"
    plot_confusion(np.array([[3, 1], [0, 4]]), ["neu", "ang"], str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
