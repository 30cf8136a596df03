"""Box IoU and greedy non-maximum suppression as pure numpy functions.

Semantics follow torchvision.ops exactly (tests check kept indices and order against
`torchvision.ops.batched_nms`): boxes are x1, y1, x2, y2 float32; area = (x2 - x1) * (y2 - y1)
without clamping; IoU = inter / (area_a + area_b - inter), computed in float32 in that order; a
box is suppressed when its IoU with a kept box is strictly greater than the threshold (compared
in double precision, as torchvision's kernel does), so a zero-area box (IoU 0/0 = NaN) never
suppresses or is suppressed. Scores are sorted descending with a stable sort: among equal scores
the lower index comes first.

The overlap test is vectorised over blocks of box pairs; the remaining greedy loop visits each box
once and does one vectorised OR, never a Python loop per pair.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """boxes [N, 4] x1y1x2y2 -> areas [N] (negative for inverted boxes, as in torchvision)."""
    boxes = np.asarray(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU: [N, 4] x [M, 4] -> [N, M] (NaN where both boxes have zero area)."""
    a = np.asarray(boxes_a, dtype=np.float32)
    b = np.asarray(boxes_b, dtype=np.float32)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(bottom_right - top_left, np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-agnostic greedy NMS. boxes [N, 4], scores [N] -> kept indices int64 [K], best first."""
    return batched_nms(boxes, scores, np.zeros(len(scores), dtype=np.int64), iou_threshold)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Per-class greedy NMS: boxes only suppress boxes of their own class.

    boxes [N, 4] x1y1x2y2, scores [N], classes [N] int -> kept indices int64 [K] into the inputs,
    in decreasing score order (ties: lower index first).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores)
    classes = np.asarray(classes)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"boxes, scores and classes disagree in length: {len(boxes)}, {len(scores)}, {len(classes)}")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    corners = boxes[order]
    cls = classes[order]
    areas = box_area(corners)
    suppressed = np.zeros(len(order), dtype=bool)
    for start in range(0, len(order), _BLOCK):
        stop = min(start + _BLOCK, len(order))
        over = _overlaps(corners, areas, cls, start, stop, float(iou_threshold))
        for i in range(start, stop):  # greedy: a box still standing suppresses what it overlaps
            if not suppressed[i]:
                suppressed[start:] |= over[i - start]
    return order[~suppressed].astype(np.int64)


_BLOCK = 256  # rows of the overlap matrix built at a time: memory stays O(_BLOCK x N)


def _overlaps(corners, areas, cls, start: int, stop: int, threshold: float) -> np.ndarray:
    """bool [stop - start, N - start]: row box i suppresses column box j (j after i, same class)."""
    rows, cols = corners[start:stop], corners[start:]
    zero = np.float32(0)
    w = np.minimum(rows[:, None, 2], cols[None, :, 2]) - np.maximum(rows[:, None, 0], cols[None, :, 0])
    h = np.minimum(rows[:, None, 3], cols[None, :, 3]) - np.maximum(rows[:, None, 1], cols[None, :, 1])
    w, h = np.maximum(zero, w), np.maximum(zero, h)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (areas[start:stop, None] + areas[None, start:] - inter)
    over = iou.astype(np.float64) > threshold
    over &= cls[start:stop, None] == cls[None, start:]
    over &= np.arange(start, stop)[:, None] < np.arange(start, len(areas))[None, :]
    return over
