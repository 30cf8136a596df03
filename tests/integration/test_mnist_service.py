"""The bundled MNIST models served end to end: the server must agree with ONNX Runtime in-process.

The 1,000 held-out MNIST digits (export.data.mnist, never used for training) are sent as PNG files
through the vision API (Classify) and the Open Inference Protocol (ModelInfer with a BYTES input,
so the server decodes and preprocesses them, and with raw tensors). Each answer must carry exactly
the label ONNX Runtime gives when run in this process on `service.preprocess` of the same digits,
with scores within 1e-5. These models come from model_repo/; a missing model is a failure.
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest

from export.data.mnist import heldout_digits, to_model_inputs
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.postprocess.classify import softmax
from service.repository import scan_model
from service.servicers.v2_tensors import append_input, response_outputs

from testkit import BUNDLED_REPO

MODELS = ("lenet5", "simple_cnn", "bn_cnn")
SCORE_TOLERANCE = 1e-5
MAX_IMAGES_PER_REQUEST = 64  # the server's default limit


@pytest.fixture(scope="module")
def digits():
    images, labels = heldout_digits()
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    encoded = [cv2.imencode(".png", image)[1].tobytes() for image in images]
    return images, labels, encoded


class Reference:
    """A bundled model run by ONNX Runtime in this process, on service.preprocess output."""

    def __init__(self, name: str, images: np.ndarray):
        source = scan_model(BUNDLED_REPO / name)
        self.name, self.config, self.version = name, source.config, source.default_version
        session = ort.InferenceSession(str(source.model_path(self.version)), providers=["CPUExecutionProvider"])
        self.inputs = to_model_inputs(images, self.config.preprocessing)
        answer = self.config.answer_output
        self.output = session.run([answer], {self.config.inputs[0].name: self.inputs})[0].reshape(len(images), -1)
        scores = self.output if self.config.postprocessing.scores == "probabilities" else softmax(self.output)
        self.probabilities = scores
        self.labels = np.argmax(self.output, axis=1)

    @property
    def batch(self) -> int:
        return min(self.config.batching.max_batch_size, MAX_IMAGES_PER_REQUEST)


@pytest.fixture(scope="module")
def references(digits):
    """name -> Reference, computed once per model for the three tests."""
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cache[name] = Reference(name, digits[0])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def channel(bundled_server):
    with grpc.insecure_channel(bundled_server.address) as channel:
        yield channel


def chunks(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


@pytest.mark.parametrize("name", MODELS)
def test_classify_matches_onnxruntime(channel, digits, references, name):
    images, _, encoded = digits
    reference = references(name)
    stub = vpb_grpc.VisionServiceStub(channel)
    labels, scores = [], []
    for part in chunks(len(images), reference.batch):
        request = vpb.ClassifyRequest(
            model=vpb.ModelRef(name=name), top_k=1, images=[vpb.Image(encoded=data) for data in encoded[part]]
        )
        reply = stub.Classify(request, timeout=120)
        assert (reply.model_name, reply.model_version) == (name, str(reference.version))
        assert len(reply.results) == part.stop - part.start
        for result in reply.results:
            (top,) = result.predictions
            labels.append(top.class_index)
            scores.append(top.score)
    np.testing.assert_array_equal(labels, reference.labels)
    want = reference.probabilities[np.arange(len(images)), reference.labels]
    np.testing.assert_allclose(scores, want, atol=SCORE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_v2_bytes_input_matches_onnxruntime(channel, digits, references, name):
    """Encoded PNGs in a BYTES input: the server runs the same preprocessing as the reference."""
    images, _, encoded = digits
    reference = references(name)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    answer = reference.config.answer_output
    outputs = []
    for part in chunks(len(images), reference.batch):
        request = pb.ModelInferRequest(model_name=name)
        append_input(request, reference.config.inputs[0].name, np.array(encoded[part], dtype=object))
        request.outputs.add(name=answer)
        outputs.append(response_outputs(stub.ModelInfer(request, timeout=120))[answer])
    got = np.concatenate(outputs).reshape(len(images), -1)
    np.testing.assert_array_equal(np.argmax(got, axis=1), reference.labels)
    np.testing.assert_allclose(got, reference.output, atol=SCORE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_v2_tensor_input_matches_onnxruntime(channel, digits, references, name):
    """Client-side preprocessing (raw FP32 tensors) gives the same answers as server-side."""
    images, _, _ = digits
    reference = references(name)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    answer = reference.config.answer_output
    outputs = []
    for part in chunks(len(images), reference.config.batching.max_batch_size):
        request = pb.ModelInferRequest(model_name=name)
        append_input(request, reference.config.inputs[0].name, reference.inputs[part])
        outputs.append(response_outputs(stub.ModelInfer(request, timeout=120))[answer])
    got = np.concatenate(outputs).reshape(len(images), -1)
    np.testing.assert_array_equal(np.argmax(got, axis=1), reference.labels)
    np.testing.assert_allclose(got, reference.output, atol=SCORE_TOLERANCE, rtol=0)
