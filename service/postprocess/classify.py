"""Classification post-processing: softmax and top-k, as pure numpy functions."""

from __future__ import annotations

import numpy as np

from service.errors import InvalidArgument


def softmax(logits: np.ndarray) -> np.ndarray:
    """[N, C] logits -> [N, C] probabilities (max-shifted for numerical stability)."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def resolve_top_k(requested: int, default: int, num_classes: int) -> int:
    """0 means the configured default; negative is an error; above the class count means all."""
    if requested < 0:
        raise InvalidArgument(f"top_k must be >= 0, got {requested}")
    k = requested or default
    return min(k, num_classes)


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] scores -> ([N, k] indices, [N, k] scores), highest first; ties keep the lower index."""
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=-1)
