"""CAM export (export/cam_export.py) and the bundled gap_cnn: graphs, configs, torch references,
and the localisation numbers re-measured from the committed ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.cam_export import ADDED_WEIGHTS, locate_class_weights, prepare_cam_version
from export.data.scenes import SCENE_CLASSES
from export.evaluate.cam import (
    HELDOUT_COUNT,
    argmax_inside,
    box_iou,
    cam_box,
    evaluate_localisation,
    heldout_scenes,
    open_model,
)
from export.models import build_model
from export.parity import cpu_session
from service.config import load_model_config, parse_model_config
from service.errors import FailedPrecondition
from service.postprocess.cam import class_activation_map
from service.preprocess import preprocess_image
from service.pipelines.cam_weights import read_class_weights

REPO_ROOT = Path(__file__).resolve().parents[2]
GAP_CNN = REPO_ROOT / "model_repo" / "gap_cnn"


def astronaut_tensor(config) -> np.ndarray:
    from skimage import data

    tensor, _ = preprocess_image(data.astronaut(), config.preprocessing, source_order="rgb")
    return tensor[None]


def torch_cam_reference(model: torch.nn.Module, layer: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """[C, h, w] CAMs from a forward hook on the last conv stage and the fc weights."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _a, output: captured.append(output.detach()))
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(x))
    finally:
        handle.remove()
    return torch.relu(torch.einsum("ck,khw->chw", model.fc.weight.detach(), captured[0][0])).numpy()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    return model, prepare_cam_version(model, "resnet18", name="resnet18_cam", num_classes=10, input_hw=(64, 64))


def test_resnet18_export_declares_the_cam_source(resnet18):
    model, prepared = resnet18
    config = prepared.config
    cam = config.postprocessing.cam
    assert (cam.method, cam.features_output, config.answer_output) == ("cam", "features", "logits")
    assert [o.dims for o in config.outputs] == [(-1, 10), (-1, 512, 2, 2)]
    graph = onnx.load_from_string(prepared.graph.onnx_bytes)
    stored = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    np.testing.assert_array_equal(stored[cam.weights_initializer], model.fc.weight.detach().numpy())
    assert prepared.parity.worst <= 1e-4
    reparsed = parse_model_config(config.model_dump(mode="json"), "config.yaml")  # valid as written
    assert reparsed == config


def test_resnet18_cam_matches_the_torch_reference(resnet18, tmp_path):
    model, prepared = resnet18
    path = tmp_path / "model.onnx"
    path.write_bytes(prepared.graph.onnx_bytes)
    weights = read_class_weights(path, prepared.config.postprocessing.cam.weights_initializer)
    x = astronaut_tensor(prepared.config)
    logits, features = cpu_session(prepared.graph.onnx_bytes).run(["logits", "features"], {"input": x})
    reference = torch_cam_reference(model, model.layer4, x)
    for c in range(10):
        raw = class_activation_map(features[0], weights, c)
        assert np.abs(raw - reference[c]).max() <= 1e-4
    assert reference.max() > 0.01  # the comparison is not between two zero maps


def test_gap_cnn_cam_matches_the_torch_reference():
    torch.manual_seed(3)
    model = build_model("gap_cnn", num_classes=5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them must be right
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    prepared = prepare_cam_version(model, "gap_cnn", name="gap_cnn", num_classes=5)
    x = astronaut_tensor(prepared.config)
    _, features = cpu_session(prepared.graph.onnx_bytes).run(["logits", "features"], {"input": x})
    assert features.shape == (1, 64, 16, 16)
    reference = torch_cam_reference(model, model.features, x)
    weights = model.fc.weight.detach().numpy()
    worst = max(np.abs(class_activation_map(features[0], weights, c) - reference[c]).max() for c in range(5))
    assert worst <= 1e-4


def test_score_cam_export_for_a_network_without_gap():
    torch.manual_seed(0)
    prepared = prepare_cam_version(
        build_model("lenet5", num_classes=10), "lenet5", name="lenet5", num_classes=10, max_maps=8
    )
    cam = prepared.config.postprocessing.cam
    assert (cam.method, cam.features_output, cam.weights_initializer, cam.max_maps) == (
        "score_cam",
        "features",
        None,
        8,
    )
    assert [o.dims for o in prepared.config.outputs] == [(-1, 10), (-1, 16, 10, 10)]


def test_class_weights_are_added_when_the_graph_lacks_them(resnet18):
    _, prepared = resnet18
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    data, name = locate_class_weights(prepared.graph.onnx_bytes, weights)
    assert name == ADDED_WEIGHTS
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}
    np.testing.assert_array_equal(stored[ADDED_WEIGHTS], weights)
    cpu_session(data)  # still a valid model


def test_read_class_weights_names_a_missing_initializer(tmp_path):
    from testkit import tiny_classifier_onnx

    path = tmp_path / "model.onnx"
    tiny_classifier_onnx(path)
    assert read_class_weights(path, "weight").shape == (64, 3)
    with pytest.raises(FailedPrecondition, match="no initializer named 'fc.weight'"):
        read_class_weights(path, "fc.weight")


def test_cam_box_iou_and_argmax_helpers():
    heat = np.zeros((20, 30), dtype=np.float32)
    heat[2:6, 3:9] = 0.8
    heat[15:17, 20:22] = 1.0  # the hottest pixels
    heat[10, 25] = 0.49  # below the threshold
    np.testing.assert_array_equal(cam_box(heat), [3, 2, 22, 17])  # every pixel >= 0.5
    np.testing.assert_array_equal(cam_box(heat, 0.9), [20, 15, 22, 17])
    assert argmax_inside(heat, np.array([20, 15, 22, 17])) and not argmax_inside(heat, np.array([3, 2, 9, 6]))
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(1 / 3)
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0
    np.testing.assert_array_equal(cam_box(np.zeros((4, 4), np.float32)), np.zeros(4))


def test_bundled_gap_cnn_is_a_complete_cam_model():
    config = load_model_config(GAP_CNN / "config.yaml")
    assert config.postprocessing.cam.method == "cam" and config.postprocessing.cam.features_output == "features"
    assert (GAP_CNN / "labels.txt").read_text().split() == list(SCENE_CLASSES)
    session, _, weights = open_model(GAP_CNN)
    x = astronaut_tensor(config)
    logits, features = session.run(["logits", "features"], {"input": x})
    graph = onnx.load(str(GAP_CNN / "1" / "model.onnx"))
    bias_name = next(n.input[2] for n in graph.graph.node if n.op_type == "Gemm")
    bias = next(numpy_helper.to_array(i) for i in graph.graph.initializer if i.name == bias_name)
    # GAP + linear: each logit is the spatial mean of its (unrectified) CAM plus the bias.
    unrectified = np.einsum("ck,khw->chw", weights.astype(np.float64), features[0].astype(np.float64))
    np.testing.assert_allclose(unrectified.mean(axis=(1, 2)) + bias, logits[0], atol=1e-4)


@pytest.mark.slow
def test_bundled_gap_cnn_localises_held_out_objects():
    """The model card's numbers, re-measured from the committed ONNX on the same held-out scenes."""
    session, config, weights = open_model(GAP_CNN)
    report = evaluate_localisation(session, config, weights, heldout_scenes(HELDOUT_COUNT))
    assert report.images >= 200
    assert report.argmax_in_box >= 0.90
    assert report.box_iou_at_least_half >= 0.70
    card = json.loads((GAP_CNN / "1" / "model_card.json").read_text())
    metrics = card["training"]["metrics"]
    assert report.argmax_in_box == pytest.approx(metrics["cam_argmax_in_box"], abs=0.01)
    assert report.box_iou_at_least_half == pytest.approx(metrics["cam_box_iou_at_least_0.5"], abs=0.01)
    assert report.accuracy == pytest.approx(metrics["heldout_accuracy"], abs=0.01)
