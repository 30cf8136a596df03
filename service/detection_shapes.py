"""Which output shapes each detection layout can have: one rule, used at load and before decoding.

Why a module of its own: the rule decides whether a model loads (service/graph_checks.py, on the
graph's fixed axes and on the warm-up output) and whether a decoder runs at all
(service/postprocess/detect.py, on each image's output), so an output that cannot be its layout is
refused with the same message in both places, never decoded into garbage boxes.
Shapes include the batch axis; free axes (None, a name, -1) match anything.
"""

from __future__ import annotations

from service.config import DetectionConfig
from service.graph_shapes import fixed, shown


def yolox_anchors(strides: tuple[int, ...], input_hw: tuple[int, int]) -> int | str:
    """A = sum over strides of (H / s) * (W / s), or why the input size has no such count."""
    height, width = input_hw
    uneven = [s for s in strides if height % s or width % s]
    if uneven:
        return f"input size {list(input_hw)} is not a multiple of strides {uneven}"
    return sum((height // s) * (width // s) for s in strides)


def _channels_problem(shape: tuple, axis: int, first: int, classes: int | None) -> bool:
    """True when a fixed channel axis cannot be `first` values + one score per class."""
    channels = shape[axis]
    if not fixed(channels):
        return False
    return channels != first + classes if classes else channels <= first


def _single_problem(detection: DetectionConfig, classes: int | None, shape: tuple, input_hw) -> str | None:
    """The layouts whose answer is one tensor: what is wrong with `shape`, without the preamble."""
    layout, rank = detection.layout, len(shape)
    count = f"{classes}" if classes else "C"
    if layout == "yolo_grid":
        s, first = detection.grid, 5 * detection.boxes_per_cell
        bad = rank != 4 or any(fixed(a) and a != s for a in shape[1:3]) or _channels_problem(shape, 3, first, classes)
        return f"[N, {s}, {s}, {first} + {count}]" if bad else None
    if layout == "yolov8":
        return f"[N, 4 + {count}, A]" if rank != 3 or _channels_problem(shape, 1, 4, classes) else None
    if layout == "decoded":
        bad = rank != 3 or (fixed(shape[2]) and shape[2] != 6)
        return "[N, K, 6] (x1, y1, x2, y2, score, class)" if bad else None
    need = f"[N, A, 5 + {count}]"
    if rank != 3 or _channels_problem(shape, 2, 5, classes):
        return need
    if layout == "yolox" and input_hw is not None:
        anchors = yolox_anchors(detection.strides, input_hw)
        if isinstance(anchors, str):
            return f"{need} at strides {list(detection.strides)}, but the {anchors}"
        if fixed(shape[1]) and shape[1] != anchors:
            levels = f"A = sum of (H/s)(W/s) at input {list(input_hw)}, strides {list(detection.strides)}"
            return f"[N, {anchors}, 5 + {count}] ({levels})"
    return None


def detection_problem(
    detection: DetectionConfig, classes: int | None, shape: tuple, input_hw: tuple[int, int] | None = None
) -> str | None:
    """Why an output of `shape` (batch axis included) cannot be `detection.layout`; None if it can.

    `classes` is the label count, or None without labels (then only "at least one class" is known);
    `input_hw` is the model input's (height, width) where known, which fixes yolox's anchor count.
    decoded_split is checked by `split_problem` (three outputs).
    """
    if detection.layout == "decoded_split":
        return None
    need = _single_problem(detection, classes, shape, input_hw)
    if need is None:
        return None
    labels = f"{classes} labels" if classes else "no labels file (at least one class)"
    return f"layout {detection.layout} needs {need} for {labels}, the graph gives {shown(shape)}"


def split_problem(detection: DetectionConfig, shapes: dict[str, tuple]) -> tuple[str, str] | None:
    """decoded_split: boxes [N, K, 4], scores [N, K], labels [N, K] with one K; (field, problem) or None."""
    wanted = {"boxes_output": 3, "scores_output": 2, "labels_output": 2}
    counts = set()
    for (field, rank), name in zip(wanted.items(), detection.split_outputs):
        shape = shapes[name]
        need = "[N, K, 4]" if rank == 3 else "[N, K]"
        if len(shape) != rank or (rank == 3 and fixed(shape[2]) and shape[2] != 4):
            return field, f"output '{name}' must be {need}, the graph gives {shown(shape)}"
        if fixed(shape[1]):
            counts.add(shape[1])
    if len(counts) > 1:
        sizes = {name: shown(shapes[name]) for name in detection.split_outputs}
        return "boxes_output", f"the boxes, scores and labels outputs disagree on K: {sizes}"
    return None
