"""Detection post-processing: raw model output -> boxes in original-image pixels.

Three output layouts are understood, chosen by the model's `postprocessing.detection.layout`:

- "yolo_grid" [S, S, B*5 + C] (our zoo, YOLO v1 style): per cell (row i, column j) B boxes
  (x, y, w, h, confidence) then C class probabilities; x, y in [0, 1] locate the centre inside the
  cell, w, h are fractions of the input width / height. Score = confidence x class probability.
- "yolov5" [A, 5 + C] (YOLOv5, decoded YOLOX exports): cx, cy, w, h in input pixels, objectness, class
  scores. Score = objectness x class score.
- "yolov8" [4 + C, A] (YOLOv8 exports): cx, cy, w, h in input pixels, class scores (no
  objectness). Score = class score.

- "yolox" [A, 5 + C] (the raw anchor-free YOLOX head): anchors level by level for `strides`, each
  level row-major over its (H/s) x (W/s) grid; x, y are offsets in the cell (centre = (offset +
  cell index) x stride), w, h log sizes (size = exp(value) x stride). Score = objectness x class.
- "decoded" [K, 6] and "decoded_split" (boxes [K, 4], scores [K], labels [K] stacked into those
  rows by `detection_output`): NMS already ran in the graph, so ours is skipped; rows with a score
  <= 0 (padding), a negative class or a non-finite value are ignored.

Every layout expects activations already applied (probabilities) unless `scores: logits` asks for a
sigmoid (yolox, decoded). Each box keeps its best class
(argmax of its scores), then: score >= score_threshold, optional class filter, NMS per class (or
class-agnostic), map through the letterbox (`ResizeInfo`: original = (input - offset) / scale),
clip to the image, drop boxes left with no area, keep the best max_detections. Inputs are one
image's output (no batch axis); the caller splits the batch. An output that cannot be its layout
(rank, grid, channels against the labels) is refused when the model loads, by the same rule
(`service.graph_checks.detection_problem`) the decoders apply before decoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.config import DECODED_LAYOUTS, DetectionConfig, ModelConfig
from service.detection_shapes import detection_problem, split_problem
from service.errors import InternalError, InvalidArgument
from service.postprocess.nms import batched_nms
from service.preprocess import ResizeInfo


@dataclass(frozen=True)
class NmsParams:
    """Which boxes survive: score threshold, NMS IoU, at most max_detections, optional class filter.

    `from_config` fills what a request leaves out from the model config; classes None keeps all.
    The checks here are the only ones on these values.
    """

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    class_agnostic: bool = False
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{name} must be within [0, 1], got {value}")
        if self.max_detections < 1:
            raise InvalidArgument(f"max_detections must be at least 1, got {self.max_detections}")
        if self.classes is not None and any(c < 0 for c in self.classes):
            raise InvalidArgument(f"class_filter has a negative class index: {list(self.classes)}")

    def check_classes(self, num_classes: int) -> None:
        """The class filter may only name classes the model has (0 .. num_classes - 1)."""
        if self.classes is not None and any(c >= num_classes for c in self.classes):
            raise InvalidArgument(f"class_filter {list(self.classes)} names classes beyond the model's {num_classes}")

    @classmethod
    def from_config(cls, config: DetectionConfig, **overrides) -> "NmsParams":
        """Defaults from the model's config; overrides whose value is None are ignored."""
        values = {
            "score_threshold": config.score_threshold,
            "iou_threshold": config.iou_threshold,
            "max_detections": config.max_detections,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        if values.get("classes") is not None:
            values["classes"] = tuple(int(c) for c in values["classes"])
        return cls(**values)


@dataclass(frozen=True)
class Detections:
    """boxes float32 [K, 4] x1y1x2y2 original pixels; scores float32 [K]; classes int64 [K]; best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


_YOLOV5, _YOLOV8 = DetectionConfig(layout="yolov5"), DetectionConfig(layout="yolov8")


def _check_layout(config: DetectionConfig, output: np.ndarray, input_hw: tuple[int, int] | None = None) -> None:
    """Never decode an array that cannot be the layout: the rule is the one the load-time check uses
    (service/detection_shapes.py), here on one image's output (no batch axis)."""
    problem = detection_problem(config, None, (1, *output.shape), input_hw)
    if problem:
        raise InternalError(f"detection output: {problem}")


def decode_yolo_grid(
    output: np.ndarray, grid: int, boxes_per_cell: int, input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """[S, S, B*5 + C] -> boxes [S*S*B, 4] x1y1x2y2 input pixels, scores [S*S*B, C].

    Box k = (i * S + j) * B + b for cell row i, column j, slot b.
    """
    s, nb = grid, boxes_per_cell
    _check_layout(DetectionConfig(layout="yolo_grid", grid=s, boxes_per_cell=nb), output)
    out = output.astype(np.float32, copy=False)
    cells = out[:, :, : 5 * nb].reshape(s, s, nb, 5)
    height, width = input_hw
    cols = np.arange(s, dtype=np.float32)[None, :, None]
    rows = np.arange(s, dtype=np.float32)[:, None, None]
    cx = (cols + cells[..., 0]) * np.float32(width / s)
    cy = (rows + cells[..., 1]) * np.float32(height / s)
    w, h = cells[..., 2] * np.float32(width), cells[..., 3] * np.float32(height)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).reshape(-1, 4)
    scores = cells[..., 4:5] * out[:, :, None, 5 * nb :]
    return boxes, scores.reshape(s * s * nb, -1)


def decode_yolov5(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[A, 5 + C] (cx, cy, w, h input pixels, objectness, class scores) -> boxes [A, 4], scores [A, C]."""
    _check_layout(_YOLOV5, output)
    out = output.astype(np.float32, copy=False)
    return _cxcywh_to_xyxy(out[:, :4]), out[:, 4:5] * out[:, 5:]


def decode_yolov8(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[4 + C, A] (cx, cy, w, h input pixels, class scores) -> boxes [A, 4], scores [A, C]."""
    _check_layout(_YOLOV8, output)
    out = output.astype(np.float32, copy=False).T
    return _cxcywh_to_xyxy(out[:, :4]), np.ascontiguousarray(out[:, 4:])


MAX_LOG_SIZE = 20.0  # yolox: exp() of a larger log size overflows float32 into inf - inf = NaN boxes


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * values))).astype(np.float32)  # tanh form: no overflow warnings


def yolox_grid(strides: tuple[int, ...], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (column, row) [A, 2] and strides [A, 1] of every anchor, level by level."""
    height, width = input_hw
    cells, steps = [], []
    for stride in strides:
        rows, cols = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        cells.append(np.stack([cols.ravel(), rows.ravel()], axis=1))
        steps.append(np.full(rows.size, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)[:, None]


def decode_yolox(
    output: np.ndarray, config: DetectionConfig, input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """[A, 5 + C] raw YOLOX head -> boxes [A, 4] x1y1x2y2 input pixels, scores [A, C]."""
    _check_layout(config, output, input_hw)
    out = output.astype(np.float32, copy=False)
    cells, strides = yolox_grid(config.strides, input_hw)
    centre = (out[:, :2] + cells) * strides
    size = np.exp(np.minimum(out[:, 2:4], MAX_LOG_SIZE)) * strides
    confidence = _sigmoid(out[:, 4:]) if config.scores == "logits" else out[:, 4:]
    return _cxcywh_to_xyxy(np.concatenate([centre, size], axis=1)), confidence[:, :1] * confidence[:, 1:]


def decode_decoded(output: np.ndarray, config: DetectionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[K, 6] rows (box, score, class) -> boxes [K', 4] x1y1x2y2 input pixels, scores [K'], classes [K'],
    padding rows dropped."""
    _check_layout(config, output)
    out = output.astype(np.float32, copy=False)
    scores = _sigmoid(out[:, 4]) if config.scores == "logits" else out[:, 4]
    valid = np.isfinite(out).all(axis=1) & (scores > 0) & (out[:, 5] >= 0)
    boxes = out[valid, :4] if config.box_format == "xyxy" else _cxcywh_to_xyxy(out[valid, :4])
    return boxes, scores[valid], out[valid, 5].astype(np.int64)


def detection_output(config: ModelConfig, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """One image's outputs -> the array `detections_from_output` reads: the answer output, or for
    decoded_split the boxes, scores and labels outputs as [K, 6] rows (shapes checked first)."""
    detection = config.postprocessing.detection
    if detection.layout != "decoded_split":
        return outputs[config.answer_output]
    boxes, scores, labels = (np.asarray(outputs[name]) for name in detection.split_outputs)
    shapes = {name: (1, *outputs[name].shape) for name in detection.split_outputs}
    found = split_problem(detection, shapes)  # at run time every axis is fixed: one K is checked too
    if found:
        raise InternalError(f"detection output: postprocessing.detection.{found[0]}: {found[1]}")
    return np.concatenate([boxes, scores[:, None], labels[:, None]], axis=1, dtype=np.float32)


def _cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """boxes [A, 4] centre x, centre y, width, height -> [A, 4] x1y1x2y2."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def to_original_pixels(boxes: np.ndarray, resize: ResizeInfo) -> np.ndarray:
    """boxes [K, 4] x1y1x2y2 in model-input pixels -> original-image pixels, clipped to the image.

    Inverts the preprocessing placement per axis: original = (input - offset) / scale.
    """
    (sy, sx), (oy, ox) = resize.scale_yx, resize.offset_yx
    height, width = resize.original_hw
    scale = np.array([sx, sy, sx, sy], dtype=np.float64)
    offset = np.array([ox, oy, ox, oy], dtype=np.float64)
    original = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - offset) / scale
    return np.clip(original, 0.0, [width, height, width, height]).astype(np.float32)


def decode_output(output: np.ndarray, config: DetectionConfig, input_hw: tuple[int, int]):
    """Dispatch on config.layout -> (boxes [A, 4] input pixels, scores [A, C])."""
    if config.layout == "yolo_grid":
        return decode_yolo_grid(output, config.grid, config.boxes_per_cell, input_hw)
    if config.layout == "yolov5":
        return decode_yolov5(output)
    if config.layout == "yolox":
        return decode_yolox(output, config, input_hw)
    return decode_yolov8(output)


def select_detections(boxes: np.ndarray, scores: np.ndarray, params: NmsParams):
    """boxes [A, 4], scores [A, C] -> (kept box indices [K], classes [K], scores [K]), best first.

    Best class per box, score threshold, class filter, NMS (per class unless class_agnostic).
    """
    params.check_classes(scores.shape[1])
    classes = scores.argmax(axis=1) if scores.shape[1] else np.zeros(len(scores), dtype=np.int64)
    best = scores[np.arange(len(scores)), classes] if len(scores) else np.zeros(0, np.float32)
    keep = np.flatnonzero(best >= params.score_threshold)
    if params.classes is not None:
        keep = keep[np.isin(classes[keep], np.asarray(params.classes, dtype=np.int64))]
    groups = np.zeros(len(keep), dtype=np.int64) if params.class_agnostic else classes[keep]
    kept = keep[batched_nms(boxes[keep], best[keep], groups, params.iou_threshold)]
    return kept, classes[kept].astype(np.int64), best[kept].astype(np.float32)


def select_decoded(scores: np.ndarray, classes: np.ndarray, params: NmsParams) -> np.ndarray:
    """Already-suppressed rows: score threshold and class filter only, best first (stable)."""
    keep = np.flatnonzero(scores >= params.score_threshold)
    if params.classes is not None:
        keep = keep[np.isin(classes[keep], np.asarray(params.classes, dtype=np.int64))]
    return keep[np.argsort(-scores[keep], kind="stable")]


def detections_from_output(
    output: np.ndarray, config: DetectionConfig, resize: ResizeInfo, params: NmsParams | None = None
) -> Detections:
    """One image's raw output (a layout of the module docstring, no batch axis) -> Detections: boxes
    [K, 4] x1y1x2y2 in original-image pixels, scores [K], classes [K], K <= max_detections."""
    params = params or NmsParams.from_config(config)
    if config.layout in DECODED_LAYOUTS:
        boxes, best, classes = decode_decoded(np.asarray(output), config)
        kept = select_decoded(best, classes, params)
        classes, best = classes[kept], best[kept]
    else:
        boxes, scores = decode_output(np.asarray(output), config, resize.input_hw)
        kept, classes, best = select_detections(boxes, scores, params)
    original = to_original_pixels(boxes[kept], resize)
    has_area = (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])
    cut = np.flatnonzero(has_area)[: params.max_detections]
    return Detections(boxes=original[cut], scores=best[cut], classes=classes[cut])
