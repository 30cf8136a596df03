"""`convserve train classifier`: a fine-tuned version is written by the common writer and served.

The test writes a tiny ImageFolder (two classes of 20×20 PNGs, bright top half vs bright bottom
half, with noise), fine-tunes the bundled simple_cnn on it for a few epochs, starts a real server
on the resulting repository and checks that Classify answers with the folder's class names and
exactly the labels ONNX Runtime gives in-process on service.preprocess of the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from testkit import BUNDLED_REPO, ServerThread, test_settings

from export.cli import main as cli_main
from export.models import build_model
from export.train.finetune import FineTuneError, bundled_source, load_onnx_weights
from export.train.folder_data import FolderDataError, read_image_folder
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.preprocess import preprocess_encoded
from service.repository import scan_model

CLASSES = ("bottom", "top")


def write_folder(root: Path, per_class: int = 10, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    files = []
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (20, 20), dtype=np.uint8)
            rows = slice(0, 10) if label == "top" else slice(10, 20)
            image[rows] += 180
            data = cv2.imencode(".png", image)[1].tobytes()
            (root / label / f"{i}.png").write_bytes(data)
            files.append((label, data))
    return files


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    files = write_folder(root / "shapes")
    status = cli_main(
        [
            "train",
            "classifier",
            "--data",
            str(root / "shapes"),
            "--from",
            "simple_cnn",
            "--source-repo",
            str(BUNDLED_REPO),
            "--freeze",
            "--epochs",
            "4",
            "--lr",
            "0.01",
            "--flips",
            "",
            "--heldout",
            "0.3",
            "--repo",
            str(root / "repo"),
            "--runs",
            str(root / "runs"),
            "--name",
            "shapes",
        ]
    )
    assert status == 0
    return root, files


def test_the_version_carries_labels_card_and_confusion_matrix(fine_tuned):
    root, _ = fine_tuned
    card = json.loads((root / "repo" / "shapes" / "1" / "model_card.json").read_text())
    assert card["labels"] == list(CLASSES) and card["outputs"][0]["shape"] == [-1, 2]
    confusion = card["training"]["metrics"]["confusion_matrix"]
    assert (confusion["rows"], confusion["columns"], confusion["labels"]) == ("predicted", "true", list(CLASSES))
    counts = np.asarray(confusion["counts"])
    assert counts.sum(axis=0).tolist() == [3, 3]  # columns = true class: 30 % of 10 held out per class
    assert np.trace(counts) / counts.sum() == pytest.approx(card["training"]["metrics"]["heldout_accuracy"])
    assert (root / "runs" / "shapes" / "confusion_matrix.png").stat().st_size > 0
    assert (root / "runs" / "shapes" / "training_curve.png").stat().st_size > 0


def test_freeze_keeps_the_source_backbone_and_replaces_the_head(fine_tuned):
    root, _ = fine_tuned
    _, source_onnx = bundled_source(BUNDLED_REPO, "simple_cnn")
    source, tuned = _initializers(source_onnx), _initializers(root / "repo" / "shapes" / "1" / "model.onnx")
    for name in ("features.0.weight", "features.3.weight", "features.6.weight", "classifier.1.weight"):
        np.testing.assert_array_equal(tuned[name], source[name])
    assert source["classifier.3.weight"].shape == (10, 64) and tuned["classifier.3.weight"].shape == (2, 64)


def test_a_real_server_classifies_with_the_fine_tuned_version(fine_tuned):
    root, files = fine_tuned
    repo = root / "repo"
    source = scan_model(repo / "shapes")
    session = ort.InferenceSession(str(source.model_path(source.default_version)), providers=["CPUExecutionProvider"])
    inputs = np.stack([preprocess_encoded(data, source.config.preprocessing)[0] for _, data in files])
    expected = session.run(None, {source.config.inputs[0].name: inputs})[0].argmax(1)
    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            request = vpb.ClassifyRequest(
                model=vpb.ModelRef(name="shapes"), top_k=1, images=[vpb.Image(encoded=data) for _, data in files]
            )
            reply = vpb_grpc.VisionServiceStub(channel).Classify(request, timeout=120)
    finally:
        server.stop()
    got = [result.predictions[0] for result in reply.results]
    assert [p.class_index for p in got] == expected.tolist()
    assert [p.label for p in got] == [CLASSES[i] for i in expected]
    truth = np.asarray([CLASSES.index(label) for label, _ in files])
    assert (expected == truth).mean() >= 0.75  # a learnable task: the new head learned it


@pytest.mark.parametrize("name", ["simple_cnn", "bn_cnn", "lenet5"])
def test_bundled_weights_are_read_back_exactly_from_the_onnx_graph(name):
    arch, path = bundled_source(BUNDLED_REPO, name)
    model = build_model(arch, num_classes=10)
    load_onnx_weights(model, path)
    x = np.random.default_rng(1).random((4, *model_input(path)), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(
            model.eval()(torch.from_numpy(x)).numpy(), session.run(None, {"input": x})[0], atol=1e-4
        )


def model_input(path: Path) -> list[int]:
    return [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1:]]


def test_a_graph_with_folded_batchnorm_is_refused_as_a_source():
    arch, path = bundled_source(BUNDLED_REPO, "gap_cnn")
    with pytest.raises(FineTuneError, match="graph lacks weights"):
        load_onnx_weights(build_model(arch, num_classes=5), path)


def test_a_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    cv2.imwrite(str(tmp_path / "only" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(FolderDataError, match="2 to 1000 class sub-folders, found 1"):
        read_image_folder(tmp_path, scan_model(BUNDLED_REPO / "simple_cnn").config.preprocessing)
