"""Classification metrics and evaluation of models (torch or ONNX Runtime) on image sets.

The metrics are the lecture's: accuracy, and per class precision TP/(TP+FP) and recall
TP/(TP+FN) read off the confusion matrix (rows: true class, columns: predicted class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.parity import cpu_session


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] int64 counts; entry [t, p] = images of class t predicted as p."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision TP/(TP+FP) and recall TP/(TP+FN), [C] each; 0 where undefined (0/0)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)  # TP + FP
    actual = confusion.sum(axis=1)  # TP + FN
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


@dataclass(frozen=True)
class ClassificationReport:
    accuracy: float
    confusion: np.ndarray  # [C, C]
    precision: np.ndarray  # [C]
    recall: np.ndarray  # [C]

    def per_class(self, labels: list[str]) -> dict[str, dict[str, float]]:
        return {
            label: {"precision": float(p), "recall": float(r), "support": int(n)}
            for label, p, r, n in zip(labels, self.precision, self.recall, self.confusion.sum(axis=1))
        }

    def as_markdown(self, labels: list[str], title: str) -> str:
        rows = [f"## {title}", "", f"accuracy: {self.accuracy:.4f}", "", "| class | precision | recall | support |"]
        rows.append("|---|---|---|---|")
        for label, stats in self.per_class(labels).items():
            rows.append(f"| {label} | {stats['precision']:.4f} | {stats['recall']:.4f} | {stats['support']} |")
        return "\n".join(rows) + "\n"


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> ClassificationReport:
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall = precision_recall(confusion)
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    return ClassificationReport(accuracy, confusion, precision, recall)


def onnx_logits(onnx_model: bytes | str, inputs: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Run an ONNX classifier (bytes or file path) on float32 NCHW `inputs`; returns its first output."""
    session = cpu_session(onnx_model if isinstance(onnx_model, bytes) else str(onnx_model))
    name = session.get_inputs()[0].name
    chunks = [session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    return np.concatenate(chunks)


def torch_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Run the eval-mode torch `model` on float32 NCHW `inputs`."""
    model.eval()
    with torch.no_grad():
        starts = range(0, len(inputs), batch_size)
        chunks = [model(torch.from_numpy(inputs[i : i + batch_size])).numpy() for i in starts]
    return np.concatenate(chunks)
