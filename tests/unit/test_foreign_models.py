"""Models nobody here made: a config that disagrees with its graph is refused at load, naming the field.

Each test builds a small ONNX graph with onnx.helper, writes a config as a user would, and loads it
through the real ModelRegistry (ONNX Runtime sessions, warm-up runs): the verdict is READY or
UNAVAILABLE with a reason `<file>: <field>: <problem>`. A positive control next to each refusal
shows the same graph loads once the named field is fixed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from service.config import DetectionConfig, SegmentationConfig
from service.graph_checks import detection_problem, segmentation_problem
from service.metrics import Metrics
from service.models import READY, UNAVAILABLE, LoadOptions, ModelRegistry
from service.postprocess.segment import label_map_from_logits, one_channel_planes
from service.preprocess import ResizeInfo

from testkit import tiny_classifier_onnx


def save(path: Path, nodes, inputs, outputs, initializers=()) -> None:
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def conv_weight(name: str, out_channels: int, in_channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.normal(0, 0.5, (out_channels, in_channels, 1, 1)).astype(np.float32), name)


def classifier_fixed_batch(path: Path, batch: int) -> None:
    """[batch, 1, 8, 8] -> [batch, 3]: a graph exported with its batch axis fixed."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (64, 3)).astype(np.float32), "weight")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    save(
        path,
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [weight],
    )


def skip_segmenter(path: Path, classes: int = 2) -> None:
    """[N, 1, H, W] -> [N, classes, H, W]: a 1x1 conv plus its 2x max-pooled, 2x upsampled copy.

    The skip connection (Add) only broadcasts when H and W are even: the stride constraint of a
    downsampling-upsampling network, which the graph's free axes do not show.
    """
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Add", ["c", "u"], ["logits"]),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    save(
        path,
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        [conv_weight("w", classes, 1), scales],
    )


def yolov5_head(path: Path, channels: int, hide_channels: bool = False) -> None:
    """[N, 3, 16, 16] -> [N, 256, channels] (a yolov5-style [N, A, 5 + C] head, sigmoid applied).

    With `hide_channels` the reshape target is computed in the graph (Shape, Slice, Concat), so
    the graph's declared output is [N, A, K] and only a run shows the channel count.
    """
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"])]
    if hide_channels:
        nodes += [
            helper.make_node("Shape", ["c"], ["c_shape"]),
            helper.make_node("Slice", ["c_shape", "start", "stop"], ["n_k"]),
            helper.make_node("Concat", ["n_k", "minus_one"], ["shape"], axis=0),
        ]
    constants = (
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "stop"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        ]
        if hide_channels
        else [numpy_helper.from_array(np.array([0, channels, -1], dtype=np.int64), "shape")]
    )
    nodes += [
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["output"]),
    ]
    declared = ["N", "A", "K"] if hide_channels else ["N", 256, channels]
    save(
        path,
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, declared)],
        [conv_weight("w", channels, 3), *constants],
    )


def one_channel_segmenter(path: Path) -> None:
    """[N, 3, H, W] -> [N, 1, H, W] text-probability style map (sigmoid of a 1x1 conv)."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["prob"])]
    save(
        path,
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [conv_weight("w", 1, 3)],
    )


def write_model(repo: Path, name: str, config: dict, labels: list[str], build) -> Path:
    directory = repo / name
    build(directory / "1" / "model.onnx")
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    (directory / "config.yaml").write_text(yaml.safe_dump({"name": name, "labels": "labels.txt", **config}))
    return directory / "config.yaml"


def verdict(repo: Path, name: str) -> tuple[str, str]:
    async def load():
        registry = ModelRegistry(repo, Metrics(process_metrics=False), LoadOptions(providers=("cpu",)))
        entry = await registry.load(name)
        await registry.close(1.0)
        return entry.state, entry.reason

    return asyncio.run(load())


def refused(repo: Path, name: str, config_path: Path, field: str) -> str:
    """The load verdict must be UNAVAILABLE with a reason starting `<file>: <field>: `; the problem."""
    state, reason = verdict(repo, name)
    assert state == UNAVAILABLE, reason
    prefix = f"{config_path}: {field}: "
    assert reason.startswith(prefix), reason
    return reason[len(prefix) :]


def classifier(dtype="float32", dims=(-1, 1, 8, 8), size=(8, 8), max_batch=8, **preprocessing) -> dict:
    return {
        "task": "classification",
        "inputs": [{"name": "input", "dtype": dtype, "dims": list(dims)}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [-1, 3]}],
        "preprocessing": {"color_order": "gray", "size": list(size), **preprocessing},
        "batching": {"max_batch_size": max_batch},
    }


LABELS3 = ["a", "b", "c"]


def test_a_float16_config_on_a_float32_graph_is_refused(tmp_path):
    path = write_model(tmp_path, "m", classifier(dtype="float16"), LABELS3, tiny_classifier_onnx)
    problem = refused(tmp_path, "m", path, "inputs[0].dtype")
    assert "'float16'" in problem and "float32" in problem
    write_model(tmp_path, "m", classifier(dtype="float32"), LABELS3, tiny_classifier_onnx)
    assert verdict(tmp_path, "m") == (READY, "")


def test_a_batch_axis_fixed_at_one_needs_max_batch_size_one(tmp_path):
    def build(path):
        return classifier_fixed_batch(path, 1)

    path = write_model(tmp_path, "m", classifier(max_batch=32), LABELS3, build)
    problem = refused(tmp_path, "m", path, "batching.max_batch_size")
    assert "32" in problem and "batching.max_batch_size: 1" in problem and "dynamic batch" in problem
    write_model(tmp_path, "m", classifier(max_batch=1), LABELS3, build)
    assert verdict(tmp_path, "m") == (READY, "")


def test_a_batch_axis_fixed_above_one_is_refused(tmp_path):
    path = write_model(tmp_path, "m", classifier(max_batch=4), LABELS3, lambda p: classifier_fixed_batch(p, 4))
    assert "batch axis of input 'input' at 4" in refused(tmp_path, "m", path, "inputs[0].dims")


def test_a_fixed_graph_size_against_preprocessing_size(tmp_path):
    config = classifier(dims=(-1, 1, -1, -1), size=(10, 10))  # the config leaves H, W free; the graph fixes 8x8
    path = write_model(tmp_path, "m", config, LABELS3, tiny_classifier_onnx)
    problem = refused(tmp_path, "m", path, "preprocessing.size")
    assert "[10, 10]" in problem and "[8, 8]" in problem


def test_a_free_config_axis_the_graph_fixes(tmp_path):
    config = classifier(dims=(-1, -1, 8, 8))
    path = write_model(tmp_path, "m", config, LABELS3, tiny_classifier_onnx)
    assert "axis 1" in refused(tmp_path, "m", path, "inputs[0].dims")


def segmenter(size, labels=2, **preprocessing) -> dict:
    return {
        "task": "segmentation",
        "inputs": [{"name": "input", "dims": [-1, 1, -1, -1]}],
        "outputs": [{"name": "logits", "dims": [-1, labels, -1, -1]}],
        "preprocessing": {"color_order": "gray", "size": list(size), **preprocessing},
    }


def test_a_size_off_the_configured_stride_is_refused_before_any_run(tmp_path):
    path = write_model(tmp_path, "m", segmenter((30, 30), stride=4), ["bg", "fg"], skip_segmenter)
    assert "not a multiple of preprocessing.stride 4" in refused(tmp_path, "m", path, "preprocessing.size")


def test_a_stride_incompatible_size_fails_warm_up_naming_the_field(tmp_path):
    path = write_model(tmp_path, "m", segmenter((15, 15)), ["bg", "fg"], skip_segmenter)
    problem = refused(tmp_path, "m", path, "preprocessing.size")
    assert "warm-up run with inputs {'input': [1, 1, 15, 15]} failed" in problem and "stride" in problem
    write_model(tmp_path, "m", segmenter((16, 16)), ["bg", "fg"], skip_segmenter)
    assert verdict(tmp_path, "m") == (READY, "")


def detector(channels: int | None, layout="yolov5") -> dict:
    return {
        "task": "detection",
        "inputs": [{"name": "images", "dims": [-1, 3, 16, 16]}],
        "outputs": [{"name": "output", "dims": [-1, -1, channels or -1]}],
        "preprocessing": {"color_order": "rgb", "resize": "letterbox", "size": [16, 16]},
        "postprocessing": {"detection": {"layout": layout}},
    }


def test_a_detector_output_that_cannot_be_its_layout_is_refused(tmp_path):
    labels = ["a", "b", "c", "d", "e"]  # yolov5 needs 5 + 5 = 10 channels; the head has 8 (3 classes)
    path = write_model(tmp_path, "m", detector(8), labels, lambda p: yolov5_head(p, 8))
    problem = refused(tmp_path, "m", path, "postprocessing.detection.layout")
    assert "layout yolov5 needs [N, A, 5 + 5] for 5 labels" in problem and "[N, 256, 8]" in problem
    write_model(tmp_path, "m", detector(8), labels[:3], lambda p: yolov5_head(p, 8))
    assert verdict(tmp_path, "m") == (READY, "")


def test_a_detector_whose_graph_hides_the_channels_is_checked_on_the_warm_up_output(tmp_path):
    def build(path):
        return yolov5_head(path, 8, hide_channels=True)

    path = write_model(tmp_path, "m", detector(None), ["a", "b"], build)
    assert "for 2 labels, the graph gives [1, 256, 8]" in refused(
        tmp_path, "m", path, "postprocessing.detection.layout"
    )


def test_a_detector_with_the_wrong_layout_rank_is_refused(tmp_path):
    config = detector(8, layout="yolo_grid")
    config["postprocessing"]["detection"].update(grid=4, boxes_per_cell=1)
    path = write_model(tmp_path, "m", config, LABELS3, lambda p: yolov5_head(p, 8))
    assert "layout yolo_grid needs [N, 4, 4, 5 + 3]" in refused(tmp_path, "m", path, "postprocessing.detection.layout")


def test_a_one_channel_segmenter_with_two_labels_is_refused(tmp_path):
    config = {
        "task": "segmentation",
        "inputs": [{"name": "input", "dims": [-1, 3, -1, -1]}],
        "outputs": [{"name": "prob", "dims": [-1, 1, -1, -1]}],
        "preprocessing": {"color_order": "rgb", "resize": "native", "stride": 8},
    }
    path = write_model(tmp_path, "m", config, ["background", "text"], one_channel_segmenter)
    problem = refused(tmp_path, "m", path, "labels")
    assert "2 labels but the output has one channel" in problem and "argmax" in problem


@pytest.mark.parametrize(
    "layout, shape, classes, ok",
    [
        ("yolov5", (-1, 100, 85), 80, True),
        ("yolov5", ("N", "A", 85), 80, True),
        ("yolov5", ("N", 3549, 6), 80, False),
        ("yolov5", ("N", 3549, 5), None, False),
        ("yolov5", ("N", 85, 3549), None, True),  # without labels a transposed head of 85 rows cannot be told apart
        ("yolov5", ("N", 100, 85, 1), 80, False),
        ("yolov8", ("N", 84, 8400), 80, True),
        ("yolov8", ("N", 8400, 84), 80, False),
        ("yolov8", ("N", 4, 8400), None, False),
    ],
)
def test_detection_layout_against_shape_and_labels(layout, shape, classes, ok):
    assert (detection_problem(DetectionConfig(layout=layout), classes, shape) is None) == ok


def test_yolo_grid_layout_checks_the_grid_and_the_channels():
    config = DetectionConfig(layout="yolo_grid", grid=7, boxes_per_cell=2)
    assert detection_problem(config, 20, (-1, 7, 7, 30)) is None
    assert "[N, 7, 7, 10 + 20]" in detection_problem(config, 20, (-1, 13, 13, 30))
    assert detection_problem(config, 5, (-1, 7, 7, 30)) is not None
    assert detection_problem(config, None, (-1, 7, 7, 10)) is not None  # no class channel left


def test_segmentation_channels_against_labels():
    threshold = SegmentationConfig(activation="none")
    assert segmentation_problem(6, ("N", 6, "H", "W"), None) is None
    assert segmentation_problem(6, ("N", "C", "H", "W"), None) is None  # checked again on the warm-up output
    assert segmentation_problem(6, ("N", 5, "H", "W"), None)[0] == "labels"
    assert segmentation_problem(None, ("N", 1, "H", "W"), None)[0] == "dims"
    assert segmentation_problem(2, ("N", 2, "H"), None)[0] == "dims"
    assert segmentation_problem(2, ("N", 1, "H", "W"), threshold) is None
    assert segmentation_problem(None, ("N", 1, "H", "W"), threshold) is None
    assert segmentation_problem(3, ("N", 1, "H", "W"), threshold)[0] == "labels"
    assert segmentation_problem(2, ("N", 2, "H", "W"), threshold)[0] == "postprocessing.segmentation"


def one_channel_config(**segmentation) -> dict:
    config = {
        "task": "segmentation",
        "inputs": [{"name": "input", "dims": [-1, 3, -1, -1]}],
        "outputs": [{"name": "prob", "dims": [-1, 1, -1, -1]}],
        "preprocessing": {"color_order": "rgb", "resize": "native", "stride": 8},
    }
    if segmentation:
        config["postprocessing"] = {"scores": "probabilities", "segmentation": segmentation}
    return config


def test_a_thresholded_one_channel_segmenter_loads_with_two_labels_and_not_three(tmp_path):
    path = write_model(tmp_path, "m", one_channel_config(activation="none"), ["bg", "text", "x"], one_channel_segmenter)
    assert "3 labels but a thresholded one-channel map has two classes" in refused(tmp_path, "m", path, "labels")
    write_model(
        tmp_path, "m", one_channel_config(activation="none", threshold=0.3), ["bg", "text"], one_channel_segmenter
    )
    assert verdict(tmp_path, "m") == (READY, "")


def test_the_one_channel_threshold_on_a_many_channel_segmenter_is_refused(tmp_path):
    config = segmenter((16, 16))
    config["postprocessing"] = {"segmentation": {"activation": "sigmoid"}}
    path = write_model(tmp_path, "m", config, ["bg", "fg"], skip_segmenter)
    assert "applies to one-channel maps" in refused(tmp_path, "m", path, "postprocessing.segmentation")


@pytest.mark.parametrize("sigmoid", [False, True])
def test_one_channel_planes_threshold_at_the_original_size_like_numpy(sigmoid):
    rng = np.random.default_rng(3)
    scores = rng.normal(0, 2, (1, 12, 20)).astype(np.float32) if sigmoid else rng.random((1, 12, 20), np.float32)
    decision, probabilities = one_channel_planes(scores, 0.4, sigmoid)
    p = 1 / (1 + np.exp(-scores[0].astype(np.float64))) if sigmoid else scores[0]
    identity = ResizeInfo(original_hw=(12, 20), scale_yx=(1.0, 1.0), offset_yx=(0.0, 0.0), input_hw=(12, 20))
    np.testing.assert_array_equal(label_map_from_logits(decision, identity), (p > 0.4).astype(np.uint8))
    np.testing.assert_allclose(probabilities, np.stack([1 - p, p]), atol=1e-6)
    doubled = ResizeInfo(original_hw=(24, 40), scale_yx=(0.5, 0.5), offset_yx=(0.0, 0.0), input_hw=(12, 20))
    resized = cv2.resize(p.astype(np.float32), (40, 24), interpolation=cv2.INTER_LINEAR)  # half-pixel centres
    labels = label_map_from_logits(decision, doubled)
    near = np.abs(resized - 0.4) < 1e-4  # a rounding difference may flip pixels exactly at the threshold
    np.testing.assert_array_equal(labels[~near], (resized > 0.4)[~near].astype(np.uint8))


def test_color_order_against_the_graph_channels(tmp_path):
    config = classifier(dims=(-1, -1, 8, 8))
    config["preprocessing"]["color_order"] = "rgb"
    path = write_model(tmp_path, "m", config, LABELS3, tiny_classifier_onnx)
    assert refused(tmp_path, "m", path, "preprocessing.color_order") == (
        "'rgb' gives 3 channels, the graph's input 'input' has 1"
    )


def test_native_resize_on_a_fixed_size_graph_is_refused(tmp_path):
    config = classifier(dims=(-1, 1, -1, -1))
    config["preprocessing"] = {"color_order": "gray", "resize": "native"}
    path = write_model(tmp_path, "m", config, LABELS3, tiny_classifier_onnx)
    assert "'native' keeps each image's size" in refused(tmp_path, "m", path, "preprocessing.resize")


def test_a_config_output_rank_other_than_the_graphs(tmp_path):
    config = classifier()
    config["outputs"][0]["dims"] = [-1, 3, 1]
    path = write_model(tmp_path, "m", config, LABELS3, tiny_classifier_onnx)
    assert (
        refused(tmp_path, "m", path, "outputs[0].dims") == "[-1, 3, 1] has rank 3, the graph's shape [N, 3] has rank 2"
    )
