"""The real Triton client (`tritonclient[grpc]`) against convserve: wire compatibility.

Whatever tritonclient sends (raw tensors, length-prefixed BYTES, the classification parameter)
must be understood, and what it reads back must equal ONNX Runtime run in this process.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.config import load_model_config
from service.preprocess import preprocess_encoded

LABELS = ["cat", "dog", "bird"]


@pytest.fixture
def client(tiny_server):
    client = triton.InferenceServerClient(tiny_server.address)
    yield client
    client.close()


def onnx_logits(repo, tensor):
    session = ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": tensor})[0]


def encoded_images(count):
    rng = np.random.default_rng(11)
    images = []
    for index in range(count):
        extension = ".png" if index % 2 == 0 else ".jpg"
        ok, data = cv2.imencode(extension, rng.integers(0, 256, (16 + index, 12, 3), dtype=np.uint8))
        assert ok
        images.append(data.tobytes())
    return images


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "9")
    assert not client.is_model_ready("unknown")
    metadata = client.get_model_metadata("tiny", as_json=True)
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "3"]}]
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "convserve"


def test_model_config(client):
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["name"] == "tiny"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == ["1", "8", "8"]
    assert config["output"][0]["dims"] == ["3"]
    assert config["parameters"]["execution_provider"]["string_value"] == "cpu"


def test_infer_raw_tensor(client, tiny_repo):
    tensor = np.random.default_rng(12).random((4, 1, 8, 8), dtype=np.float32)
    inputs = [triton.InferInput("input", list(tensor.shape), "FP32")]
    inputs[0].set_data_from_numpy(tensor)
    result = client.infer("tiny", inputs, outputs=[triton.InferRequestedOutput("logits")], request_id="r1")
    assert result.get_response().model_name == "tiny" and result.get_response().id == "r1"
    np.testing.assert_allclose(result.as_numpy("logits"), onnx_logits(tiny_repo, tensor), rtol=1e-6, atol=1e-6)


def test_infer_bytes_images(client, tiny_repo):
    """Encoded images as a BYTES input: the server preprocesses them exactly as service.preprocess does."""
    images = encoded_images(3)
    spec = load_model_config(tiny_repo / "tiny" / "config.yaml").preprocessing
    want = onnx_logits(tiny_repo, np.stack([preprocess_encoded(data, spec)[0] for data in images]))
    inputs = [triton.InferInput("input", [len(images)], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(images, dtype=np.object_))
    result = client.infer("tiny", inputs)
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["tensor", "bytes"])
def test_infer_classification(client, tiny_repo, kind):
    if kind == "tensor":
        data = np.random.default_rng(13).random((3, 1, 8, 8), dtype=np.float32)
        infer_input = triton.InferInput("input", list(data.shape), "FP32")
        logits = onnx_logits(tiny_repo, data)
    else:
        images = encoded_images(3)
        data = np.array(images, dtype=np.object_)
        infer_input = triton.InferInput("input", [3], "BYTES")
        spec = load_model_config(tiny_repo / "tiny" / "config.yaml").preprocessing
        logits = onnx_logits(tiny_repo, np.stack([preprocess_encoded(d, spec)[0] for d in images]))
    infer_input.set_data_from_numpy(data)
    result = client.infer("tiny", [infer_input], outputs=[triton.InferRequestedOutput("logits", class_count=2)])
    strings = result.as_numpy("logits")
    assert strings.shape == (3, 2)
    for row, want in zip(strings, logits):
        order = np.argsort(-want, kind="stable")[:2]
        parsed = [item.decode().split(":") for item in row]
        assert [(int(i), label) for _, i, label in parsed] == [(int(i), LABELS[i]) for i in order]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], want[order], atol=1e-5)


def test_inference_statistics(client):
    tensor = np.zeros((2, 1, 8, 8), np.float32)
    inputs = [triton.InferInput("input", [2, 1, 8, 8], "FP32")]
    inputs[0].set_data_from_numpy(tensor)
    for _ in range(3):
        client.infer("tiny", inputs)
    (stats,) = client.get_inference_statistics("tiny", as_json=True)["model_stats"]
    assert stats["name"] == "tiny" and stats["version"] == "1"
    assert int(stats["inference_count"]) == 6
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) == 3
    for stage in ("queue", "compute_infer", "compute_output"):
        assert int(inference[stage]["count"]) == 3 and int(inference[stage]["ns"]) > 0, stage


def test_errors_surface_as_triton_exceptions(client):
    inputs = [triton.InferInput("input", [1, 1, 4, 4], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("tiny", inputs)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input'" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        client.infer("nope", inputs)
    assert error.value.status() == "StatusCode.NOT_FOUND"
