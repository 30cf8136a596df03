"""Small real ONNX models for the bad-input matrix: an RGB classifier and a YOLOv5-layout detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from testkit import tiny_classifier_onnx

RGB_CONFIG = """\
name: rgb
task: classification
inputs:
  - {name: input, dtype: float32, dims: [-1, 3, 8, 8]}
outputs:
  - {name: logits, dtype: float32, dims: [-1, 3]}
preprocessing: {color_order: rgb, resize: stretch, size: [8, 8]}
labels: labels.txt
batching: {max_batch_size: 4, max_queue_delay_us: 0}
"""

DETECTOR_CONFIG = """\
name: det
task: detection
inputs:
  - {name: images, dtype: float32, dims: [-1, 3, 32, 32]}
outputs:
  - {name: predictions, dtype: float32, dims: [-1, 3, 7]}
preprocessing: {color_order: rgb, resize: letterbox, size: [32, 32], pad_value: 114}
labels: labels.txt
batching: {max_batch_size: 4, max_queue_delay_us: 0}
postprocessing:
  detection: {layout: yolov5, score_threshold: 0.3, iou_threshold: 0.5, max_detections: 10}
"""

# Three anchors (cx, cy, w, h, objectness, p(class0), p(class1)) in 32x32 input pixels.
DETECTOR_OUTPUT = np.array(
    [
        [8, 8, 8, 8, 0.9, 0.9, 0.1],
        [9, 8, 8, 8, 0.8, 0.8, 0.2],
        [24, 24, 6, 6, 0.7, 0.1, 0.9],
    ],
    dtype=np.float32,
)


def constant_detector_onnx(path: Path) -> None:
    """Emits DETECTOR_OUTPUT for every image (the input only sets the batch size)."""
    const = numpy_helper.from_array(DETECTOR_OUTPUT[None], "anchors")
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    shape = numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "anchors"], ["predictions"]),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["N", 3, 7])],
        initializer=[const, zero, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_rgb_and_detector(repo: Path) -> None:
    (repo / "rgb").mkdir(parents=True)
    (repo / "rgb" / "config.yaml").write_text(RGB_CONFIG)
    (repo / "rgb" / "labels.txt").write_text("red\ngreen\nblue\n")
    tiny_classifier_onnx(repo / "rgb" / "1" / "model.onnx", channels=3)
    (repo / "det").mkdir(parents=True)
    (repo / "det" / "config.yaml").write_text(DETECTOR_CONFIG)
    (repo / "det" / "labels.txt").write_text("face\nbox\n")
    constant_detector_onnx(repo / "det" / "1" / "model.onnx")
