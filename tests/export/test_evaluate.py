"""Classification metrics against scikit-learn's implementations (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from export.evaluate.classification import classification_report, confusion_matrix, precision_recall


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 6, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 6, 300))
    y_pred[y_pred == 5] = 4  # class 5 is never predicted: precision 0/0 -> 0, as sklearn's zero_division=0
    report = classification_report(y_true, y_pred, 6)
    np.testing.assert_array_equal(report.confusion, metrics.confusion_matrix(y_true, y_pred, labels=range(6)))
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=range(6), zero_division=0
    )
    np.testing.assert_allclose(report.precision, precision)
    np.testing.assert_allclose(report.recall, recall)
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert [c["support"] for c in report.per_class([str(i) for i in range(6)]).values()] == support.tolist()


def test_precision_and_recall_are_the_lectures_ratios():
    confusion = confusion_matrix(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 0]), 2)
    assert confusion.tolist() == [[2, 1], [1, 1]]
    precision, recall = precision_recall(confusion)
    assert precision.tolist() == [2 / 3, 1 / 2]  # TP / (TP + FP)
    assert recall.tolist() == [2 / 3, 1 / 2]  # TP / (TP + FN)
