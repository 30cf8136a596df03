"""The yolo_grid detector: target assignment, loss, train/serve agreement and the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.data.scenes import SCENE_CLASSES, make_scenes
from export.models import build_model, get_model_spec
from export.models.yolo_grid import assign_targets, build_yolo_grid, predicted_boxes, yolo_loss
from export.train.detector import DETECTOR_SPEC, PREPROCESSING, letterbox_scene, make_batch
from service.config import load_model_config
from service.postprocess.detect import decode_yolo_grid, to_original_pixels
from service.preprocess import preprocess_image

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repo" / "yolo_grid"


def test_assign_targets_cell_and_slot():
    model = build_yolo_grid(grid=4, input_size=64)  # 16-pixel cells, priors 8.3 and 20.5 pixels
    boxes = np.array([[18, 2, 26, 10], [10, 0, 38, 28], [17, 3, 25, 11], [40, 40, 60, 60]], np.float32)
    mask, slot_boxes, classes = assign_targets(model.spec, boxes, np.array([0, 1, 2, 3]))
    assert mask[0, 1].tolist() == [True, True]  # small box -> slot 0, large -> slot 1, same cell
    np.testing.assert_array_equal(slot_boxes[0, 1], boxes[:2])
    np.testing.assert_allclose(classes[0, 1], [0.5, 0.5, 0, 0, 0])  # third object found no free slot
    assert mask[3, 3, 1] and classes[3, 3, 3] == 1.0
    assert mask.sum() == 3


@pytest.fixture
def one_thread():
    """Small models train faster on one thread than on several fighting for a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_loss_learns_a_small_batch(one_thread):
    torch.manual_seed(0)
    model = build_yolo_grid(grid=4, input_size=64, width=4)
    scenes = make_scenes(0, 4, DETECTOR_SPEC)
    images, objects = [], []
    for scene in scenes:  # 64x64 inputs: shrink the 128-pixel letterbox by two
        image, boxes = letterbox_scene(scene)
        images.append(image[::2, ::2]), objects.append((boxes / 2, scene.labels))
    x, targets = make_batch(model, np.stack(images), objects, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = yolo_loss(model, model.raw(x), targets)["loss"].item()
    for _ in range(40):
        parts = yolo_loss(model, model.raw(x), targets)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    assert parts["loss"].item() < 0.5 * first


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter, chosen on purpose
def test_exported_layout_decodes_like_training(tmp_path):
    """The ONNX output decoded by the service gives the boxes the training loss optimised."""
    torch.manual_seed(1)
    model = build_yolo_grid(grid=4, input_size=64, width=4).eval()
    x = torch.rand(2, 3, 64, 64)
    torch.onnx.export(
        model,
        (x,),
        str(tmp_path / "m.onnx"),
        input_names=["images"],
        output_names=["grid"],
        dynamic_axes={"images": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()}
    )[0]
    with torch.no_grad():
        raw = model.raw(x)
        expected_boxes = predicted_boxes(model, raw).numpy()
        np.testing.assert_allclose(out, model.decode(raw).numpy(), atol=1e-5)
    for k in range(2):
        boxes, scores = decode_yolo_grid(out[k], 4, 2, (64, 64))
        np.testing.assert_allclose(boxes, expected_boxes[k].reshape(-1, 4), atol=1e-3)
        assert np.all((scores >= 0) & (scores <= 1))


def test_registered_in_the_zoo_with_its_serving_defaults():
    spec = get_model_spec("yolo_grid")
    assert spec.task == "detection" and spec.preprocessing == PREPROCESSING
    model = build_model("yolo_grid").eval()
    detection = spec.postprocessing(5).detection
    with torch.no_grad():
        out = model(torch.zeros(1, 3, spec.input.height, spec.input.width))
    assert out.shape == (1, detection.grid, detection.grid, detection.boxes_per_cell * 5 + 5)


def test_training_boxes_map_back_to_scene_boxes():
    for scene in make_scenes(4, 6, DETECTOR_SPEC, "heldout"):
        _, boxes = letterbox_scene(scene)
        _, info = preprocess_image(scene.image, PREPROCESSING, "rgb")
        np.testing.assert_allclose(to_original_pixels(boxes, info), scene.boxes, atol=1e-3)


def test_bundled_model_files_agree():
    config = load_model_config(MODEL_DIR / "config.yaml")
    detection = config.postprocessing.detection
    labels = (MODEL_DIR / config.labels).read_text().split()
    assert labels == list(SCENE_CLASSES)
    assert config.task == "detection" and detection.layout == "yolo_grid"
    s, b = detection.grid, detection.boxes_per_cell
    assert config.outputs[0].dims == (-1, s, s, b * 5 + len(labels))
    assert config.preprocessing == PREPROCESSING and config.preprocessing.resize == "letterbox"
    session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((3, *config.inputs[0].dims[1:]), dtype=np.float32)
    out = session.run(None, {config.inputs[0].name: batch})[0]
    assert out.shape == (3, s, s, b * 5 + len(labels))
    single = session.run(None, {config.inputs[0].name: batch[1:2]})[0]
    np.testing.assert_allclose(single[0], out[1], atol=1e-5)
    np.testing.assert_allclose(out[..., 5 * b :].sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_bundled_model_meets_its_model_card():
    from export.evaluate.detector import HELDOUT_COUNT, HELDOUT_SEED, evaluate

    card = json.loads((MODEL_DIR / "1" / "model_card.json").read_text())["evaluation"]
    assert card["scenes"] == HELDOUT_COUNT >= 300 and card["seed"] == HELDOUT_SEED and card["split"] == "heldout"
    metrics, _, _ = evaluate(MODEL_DIR, card["scenes"], card["seed"])
    assert metrics["mAP@0.5"] >= card["mAP@0.5"] - 0.005
    assert metrics["mAP@[.5:.95]"] >= card["mAP@[.5:.95]"] - 0.005
    for key in ("precision", "recall"):
        assert metrics["at_default_thresholds"][key] == pytest.approx(card["at_default_thresholds"][key], abs=0.005)
