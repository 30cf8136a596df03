"""Detection decoding: grid / YOLOv5 / YOLOv8 layouts, letterbox inverse mapping, per-request options."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.config import DetectionConfig, PreprocessingConfig
from service.errors import InternalError, InvalidArgument
from service.postprocess.detect import NmsParams, decode_yolo_grid, detections_from_output
from service.preprocess import ResizeInfo, preprocess_image

GRID = DetectionConfig(layout="yolo_grid", grid=4, boxes_per_cell=2)
LETTERBOX = PreprocessingConfig(resize="letterbox", size=(64, 64), pad_value=114.0)


def grid_output(objects, s=4, nb=2, classes=3):
    """[S, S, B*5+C] holding (row, col, slot, x, y, w, h, conf, class, prob) objects; rest zero."""
    out = np.zeros((s, s, nb * 5 + classes), dtype=np.float32)
    for row, col, slot, x, y, w, h, conf, cls, prob in objects:
        out[row, col, 5 * slot : 5 * slot + 5] = (x, y, w, h, conf)
        out[row, col, nb * 5 :] = (1 - prob) / (classes - 1)
        out[row, col, nb * 5 + cls] = prob
    return out


def identity_info(hw=(64, 64)) -> ResizeInfo:
    return ResizeInfo(original_hw=hw, scale_yx=(1.0, 1.0), offset_yx=(0.0, 0.0), input_hw=hw)


def test_grid_decode_is_exact_on_constructed_output():
    out = grid_output([(2, 1, 1, 0.5, 0.25, 0.25, 0.5, 0.8, 2, 0.5)])
    boxes, scores = decode_yolo_grid(out, 4, 2, (64, 128))  # cells are 32 wide, 16 high
    k = (2 * 4 + 1) * 2 + 1
    # centre (1.5 * 32, 2.25 * 16) = (48, 36); size (0.25 * 128, 0.5 * 64) = (32, 32)
    np.testing.assert_allclose(boxes[k], [32, 20, 64, 52], atol=1e-5)
    np.testing.assert_allclose(scores[k], [0.8 * 0.25, 0.8 * 0.25, 0.8 * 0.5], atol=1e-6)
    assert boxes.shape == (32, 4) and scores.shape == (32, 3)


@pytest.mark.parametrize("original_hw", [(37, 101), (101, 37), (64, 64), (1, 300), (480, 17)])
def test_letterbox_inverse_maps_back_to_the_original_box(original_hw):
    image = np.zeros((*original_hw, 3), dtype=np.uint8)
    _, info = preprocess_image(image, LETTERBOX, source_order="rgb")
    height, width = original_hw
    truth = np.array([0.2 * width, 0.3 * height, 0.7 * width, 0.9 * height], dtype=np.float64)
    (sy, sx), (oy, ox) = info.scale_yx, info.offset_yx
    model_box = truth * [sx, sy, sx, sy] + [ox, oy, ox, oy]  # where the object lands in the input
    cx, cy = (model_box[0] + model_box[2]) / 2, (model_box[1] + model_box[3]) / 2
    col, row = int(cx // 16), int(cy // 16)
    w, h = (model_box[2] - model_box[0]) / 64, (model_box[3] - model_box[1]) / 64
    out = grid_output([(row, col, 0, cx / 16 - col, cy / 16 - row, w, h, 0.9, 1, 0.9)])
    found = detections_from_output(out, GRID, info)
    assert len(found) == 1 and found.classes.tolist() == [1]
    np.testing.assert_allclose(found.boxes[0], truth, rtol=1e-4, atol=1e-3 * max(original_hw))
    np.testing.assert_allclose(found.scores, [0.81], atol=1e-6)


def test_boxes_are_clipped_to_the_original_image_and_empty_ones_dropped():
    _, info = preprocess_image(np.zeros((32, 64, 3), np.uint8), LETTERBOX, source_order="rgb")  # pads 16 rows top
    out = grid_output(
        [
            (1, 0, 0, 0.0, 0.5, 0.5, 0.5, 0.9, 0, 1.0),  # spills over the left and top edges
            (0, 3, 0, 0.5, 0.2, 0.1, 0.1, 0.9, 1, 1.0),  # entirely inside the top padding band
        ]
    )
    found = detections_from_output(out, GRID, info)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [0, 0, 16, 24], atol=1e-4)  # input [-16, 8, 16, 40]


def test_score_threshold_class_filter_max_detections_and_agnostic_nms():
    out = grid_output(
        [
            (0, 0, 0, 0.5, 0.5, 0.2, 0.2, 0.9, 0, 1.0),
            (0, 0, 1, 0.5, 0.5, 0.2, 0.2, 0.6, 0, 1.0),  # duplicate of the first, same class
            (3, 3, 0, 0.5, 0.5, 0.2, 0.2, 0.5, 1, 1.0),
            (0, 1, 0, 0.0, 0.5, 0.2, 0.2, 0.4, 2, 1.0),  # overlaps the first, other class
            (2, 2, 0, 0.5, 0.5, 0.2, 0.2, 0.2, 1, 1.0),
        ]
    )
    info = identity_info()
    defaults = detections_from_output(out, GRID, info)
    assert defaults.scores.tolist() == pytest.approx([0.9, 0.5, 0.4])
    assert detections_from_output(out, GRID, info, NmsParams(score_threshold=0.45)).scores.tolist() == pytest.approx(
        [0.9, 0.5]
    )
    assert detections_from_output(out, GRID, info, NmsParams(score_threshold=0.5)).scores.tolist() == pytest.approx(
        [0.9, 0.5]
    )
    assert detections_from_output(out, GRID, info, NmsParams(score_threshold=0.1)).scores.tolist() == pytest.approx(
        [0.9, 0.5, 0.4, 0.2]
    )
    assert detections_from_output(out, GRID, info, NmsParams(classes=(1,), score_threshold=0.1)).classes.tolist() == [
        1,
        1,
    ]
    assert len(detections_from_output(out, GRID, info, NmsParams(max_detections=2))) == 2
    agnostic = detections_from_output(out, GRID, info, NmsParams(class_agnostic=True, iou_threshold=0.2))
    assert agnostic.classes.tolist() == [0, 1]
    assert detections_from_output(out, GRID, info, NmsParams(iou_threshold=1.0)).scores.tolist() == pytest.approx(
        [0.9, 0.6, 0.5, 0.4]
    )


def test_params_from_config_and_validation():
    config = DetectionConfig(layout="yolov8", score_threshold=0.3, iou_threshold=0.6, max_detections=7)
    params = NmsParams.from_config(config, score_threshold=None, classes=[2, 0])
    assert (params.score_threshold, params.iou_threshold, params.max_detections) == (0.3, 0.6, 7)
    assert params.classes == (2, 0)
    for bad in ({"score_threshold": 1.5}, {"iou_threshold": -0.1}, {"max_detections": 0}, {"classes": (-1,)}):
        with pytest.raises(InvalidArgument):
            NmsParams(**bad)
    with pytest.raises(InvalidArgument):
        detections_from_output(grid_output([]), GRID, identity_info(), NmsParams(classes=(3,)))
    with pytest.raises(InternalError):
        detections_from_output(np.zeros((5, 4, 13), np.float32), GRID, identity_info())


def constant_model(path, value: np.ndarray) -> None:
    """ONNX model: images [N, 3, 32, 48] -> `value` with a leading batch of 1 (plus 0 x input)."""
    const = numpy_helper.from_array(value[None].astype(np.float32), "value")
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["value", "nothing"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 48])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(value[None].shape))],
        initializer=[const, numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_onnx(path, image: np.ndarray):
    tensor, info = preprocess_image(image, PreprocessingConfig(resize="letterbox", size=(32, 48)), "rgb")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": tensor[None]})[0][0], info


# two boxes in input pixels (cx, cy, w, h) on a 32x48 input; the image is 64x192 (scale 0.25, offset
# 8 rows): input x 10..30, y 16..24 -> original x 40..120, y 32..64; the second, input x 36..44,
# y 20..28 -> original x 144..176, y 48..80, clipped to the image's 64 rows.
ANCHORS_CXCYWH = np.array([[20, 20, 20, 8], [40, 24, 8, 8]], dtype=np.float32)


def test_yolov5_layout_through_onnx_runtime(tmp_path):
    # [A, 5 + C]: boxes, objectness, class scores; score = objectness x class score
    value = np.concatenate([ANCHORS_CXCYWH, [[0.8], [0.9]], [[0.1, 0.5], [0.2, 0.1]]], axis=1)
    constant_model(tmp_path / "v5.onnx", value)
    out, info = run_onnx(tmp_path / "v5.onnx", np.zeros((64, 192, 3), np.uint8))
    found = detections_from_output(out, DetectionConfig(layout="yolov5", score_threshold=0.15), info)
    assert found.classes.tolist() == [1, 0]
    np.testing.assert_allclose(found.scores, [0.4, 0.18], atol=1e-6)
    np.testing.assert_allclose(found.boxes, [[40, 32, 120, 64], [144, 48, 176, 64]], atol=1e-4)


def test_yolov8_layout_through_onnx_runtime(tmp_path):
    # [4 + C, A]: boxes then class scores, no objectness
    value = np.concatenate([ANCHORS_CXCYWH, [[0.1, 0.7], [0.3, 0.2]]], axis=1).T
    constant_model(tmp_path / "v8.onnx", value)
    out, info = run_onnx(tmp_path / "v8.onnx", np.zeros((64, 192, 3), np.uint8))
    found = detections_from_output(out, DetectionConfig(layout="yolov8"), info)
    assert found.classes.tolist() == [1, 0]
    np.testing.assert_allclose(found.scores, [0.7, 0.3], atol=1e-6)
    np.testing.assert_allclose(found.boxes, [[40, 32, 120, 64], [144, 48, 176, 64]], atol=1e-4)
