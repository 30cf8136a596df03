"""Figures for a training run: the training curve and the confusion matrix (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_training_curve(history: list[dict], path: Path, title: str) -> None:
    """Loss (left axis) and train/held-out accuracy (right axis) per epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, loss_axis = plt.subplots(figsize=(6, 4), dpi=100)
    loss_axis.plot(epochs, [h["loss"] for h in history], "o-", color="tab:red", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy loss")
    acc_axis = loss_axis.twinx()
    acc_axis.plot(epochs, [h["train_accuracy"] for h in history], "s--", color="tab:blue", label="train accuracy")
    acc_axis.plot(epochs, [h["heldout_accuracy"] for h in history], "^-", color="tab:green", label="held-out accuracy")
    acc_axis.set_ylabel("accuracy")
    handles = loss_axis.get_legend_handles_labels()[0] + acc_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    loss_axis.set_title(f"{title}: training curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_confusion_matrix(confusion: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """`confusion[t, p]` counts (export.evaluate.classification) drawn in the lecture's layout:
    rows = predicted class, columns = true class."""
    plt = pyplot()
    shown = np.asarray(confusion).T
    fig, axis = plt.subplots(figsize=(5.5, 5), dpi=100)
    axis.imshow(shown, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("true (actual)")
    axis.set_ylabel("predicted")
    threshold = shown.max() / 2 if shown.size else 0
    for (row, col), count in np.ndenumerate(shown):
        axis.text(
            col, row, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black"
        )
    axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
