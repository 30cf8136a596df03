"""NMS and IoU against torchvision.ops, the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import ops

from service.postprocess.nms import batched_nms, box_iou, nms

THRESHOLDS = (0.0, 0.1, 0.3, 0.45, 0.5, 0.7, 1.0)


def random_case(rng: np.random.Generator, trial: int):
    """Boxes with distinct scores; every few trials integer corners, zero-area and repeated boxes."""
    n = int(rng.integers(0, 120))
    corner = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    size = rng.uniform(0, 40, (n, 2)).astype(np.float32)
    if trial % 3 == 0:
        corner, size = np.round(corner), np.round(size)
    if trial % 4 == 0 and n > 4:
        size[: n // 4] = 0  # zero-area boxes
    if trial % 5 == 0 and n > 6:
        corner[n // 2 : n // 2 + 4], size[n // 2 : n // 2 + 4] = corner[n // 2], size[n // 2]  # identical boxes
    boxes = np.concatenate([corner, corner + size], axis=1)
    scores = (rng.permutation(n) + rng.uniform(0, 0.5)).astype(np.float32) / max(n, 1)
    classes = rng.integers(0, int(rng.integers(1, 6)), n)
    return boxes, scores, classes


def reference(boxes, scores, classes, threshold):
    return ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), threshold
    ).numpy()


def test_batched_nms_matches_torchvision_on_thousands_of_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        boxes, scores, classes = random_case(rng, trial)
        threshold = float(THRESHOLDS[trial % len(THRESHOLDS)])
        kept = batched_nms(boxes, scores, classes, threshold)
        np.testing.assert_array_equal(kept, reference(boxes, scores, classes, threshold), err_msg=f"trial {trial}")


def test_large_sets_span_several_blocks_and_match_torchvision():
    rng = np.random.default_rng(1)
    for n in (257, 1200):  # over one 256-row block; over 4000 coordinates (torchvision's per-class path)
        corner = rng.uniform(0, 500, (n, 2)).astype(np.float32)
        boxes = np.concatenate([corner, corner + rng.uniform(5, 80, (n, 2)).astype(np.float32)], axis=1)
        scores = rng.permutation(n).astype(np.float32)
        classes = rng.integers(0, 3, n)
        np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.5), reference(boxes, scores, classes, 0.5))


def test_class_agnostic_nms_matches_torchvision_nms():
    rng = np.random.default_rng(2)
    for trial in range(300):
        boxes, scores, _ = random_case(rng, trial)
        expected = ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, 0.45), expected)


def test_tied_scores_keep_equivalent_boxes():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        corner = rng.uniform(0, 60, (n, 2)).astype(np.float32)
        boxes = np.concatenate([corner, corner + rng.uniform(1, 30, (n, 2)).astype(np.float32)], axis=1)
        scores = rng.integers(0, 4, n).astype(np.float32)  # many ties
        classes = rng.integers(0, 2, n)
        kept = batched_nms(boxes, scores, classes, 0.5)
        expected = reference(boxes, scores, classes, 0.5)
        assert len(kept) == len(expected)
        np.testing.assert_array_equal(scores[kept], scores[expected])

        def order(idx, boxes=boxes, classes=classes):
            return np.lexsort(np.column_stack([boxes[idx], classes[idx]]).T)

        np.testing.assert_array_equal(boxes[kept][order(kept)], boxes[expected][order(expected)])


def test_identical_boxes_keep_only_the_best_and_zero_area_boxes_all_survive():
    box = np.array([[10, 10, 20, 20]], dtype=np.float32)
    boxes = np.repeat(box, 4, axis=0)
    scores = np.array([0.2, 0.9, 0.5, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1]
    flat = np.array([[5, 5, 5, 9], [5, 5, 5, 9], [0, 0, 0, 0]], dtype=np.float32)
    assert nms(flat, np.array([0.3, 0.2, 0.1], np.float32), 0.0).tolist() == [0, 1, 2]


def test_threshold_is_strict_and_classes_do_not_suppress_each_other():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    assert batched_nms(boxes, scores, np.array([0, 1]), 0.0).tolist() == [0, 1]


def test_empty_input_and_length_mismatch():
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)
    with pytest.raises(ValueError):
        batched_nms(np.zeros((2, 4)), np.zeros(3), np.zeros(2, np.int64), 0.5)


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(4)
    a = np.concatenate([c := rng.uniform(0, 50, (30, 2)), c + rng.uniform(1, 30, (30, 2))], axis=1).astype(np.float32)
    b = np.concatenate([c := rng.uniform(0, 50, (20, 2)), c + rng.uniform(1, 30, (20, 2))], axis=1).astype(np.float32)
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-6, atol=1e-7)
