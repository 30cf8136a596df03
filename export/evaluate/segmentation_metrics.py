"""Segmentation metrics of the lecture: the pixel confusion matrix and IoU = TP / (TP + FP + FN).

Shared by training (validation mIoU per epoch), the held-out evaluation and the tests.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int, ignore: int | None = None) -> np.ndarray:
    """Pixel counts int64 [classes, classes], rows = true class, columns = predicted class."""
    truth, predicted = truth.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    if ignore is not None:
        keep = truth != ignore
        truth, predicted = truth[keep], predicted[keep]
    return np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class, float64 [classes]; NaN for a class absent from truth and prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes that occur (in truth or prediction)."""
    return float(np.nanmean(iou_per_class(confusion)))
