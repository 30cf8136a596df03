"""Explain and Classify(explain) on a real server: CAM against torch, Score-CAM through the batcher,
the V2 route to the same map, overlays, and errors."""

from __future__ import annotations

import dataclasses

import cv2
import grpc
import numpy as np
import pytest
import torch

from export.cam_export import prepare_cam_version
from export.data.scenes import make_scene
from export.evaluate.cam import CAM_SCENE_SPEC
from export.model_version import write_version
from export.models import build_model
from export.parity import cpu_session
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as ipb
from service.api.inference import grpc_service_pb2_grpc as ipb_grpc
from service.config import ModelConfig, load_model_config
from service.postprocess import cam as cam_math
from service.postprocess.classify import softmax
from service.preprocess import preprocess_encoded
from service.servicers.vision_convert import tensor_from_proto, tensor_to_proto
from service.pipelines.cam_weights import read_class_weights

from testkit import ServerThread, copy_bundled_model, write_tiny_model
from testkit import test_settings as settings_for


def _write(prepared, repo, **batching):
    if batching:
        data = prepared.config.model_dump(mode="json")
        data["batching"].update(batching)
        prepared = dataclasses.replace(prepared, config=ModelConfig.model_validate(data))
    write_version(prepared, repo, version=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A repository with CAM models (torch modules kept for references) and one without CAM."""
    repo = tmp_path_factory.mktemp("explain") / "repo"
    repo.mkdir()
    copy_bundled_model("gap_cnn", repo)
    write_tiny_model(repo)
    torch.manual_seed(0)
    modules = {
        "resnet18_cam": build_model("resnet18", num_classes=10).eval(),
        "gap_cnn_random": build_model("gap_cnn", num_classes=5).eval(),
        "lenet5_cam": build_model("lenet5", num_classes=10).eval(),
    }
    _write(
        prepare_cam_version(
            modules["resnet18_cam"], "resnet18", name="resnet18_cam", num_classes=10, input_hw=(64, 64)
        ),
        repo,
    )
    _write(prepare_cam_version(modules["gap_cnn_random"], "gap_cnn", name="gap_cnn_random", num_classes=5), repo)
    # 12 maps in chunks of at most 5: the Score-CAM passes must be split for the batcher.
    _write(
        prepare_cam_version(modules["lenet5_cam"], "lenet5", name="lenet5_cam", num_classes=10, max_maps=12),
        repo,
        max_batch_size=5,
        preferred_batch_sizes=[],
    )
    return repo, modules


@pytest.fixture(scope="module")
def server(models):
    server = ServerThread(settings_for(models[0])).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def vision(channel):
    return vpb_grpc.VisionServiceStub(channel)


def encode(image_bgr: np.ndarray, extension: str = ".png") -> bytes:
    ok, data = cv2.imencode(extension, image_bgr)
    assert ok
    return data.tobytes()


def astronaut_png() -> bytes:
    from skimage import data

    return encode(np.ascontiguousarray(data.astronaut()[::4, ::3, ::-1]))  # 128×171 BGR


def explain(vision, model, data=None, tensor=None, **options):
    image = vpb.Image(encoded=data) if data is not None else vpb.Image(tensor=tensor_to_proto(tensor))
    request = vpb.ExplainRequest(model=vpb.ModelRef(name=model), images=[image], options=vpb.ExplainOptions(**options))
    response = vision.Explain(request, timeout=60)
    assert response.model_name == model and len(response.maps) == 1
    return response.maps[0]


def torch_cams(module, layer, tensor):
    captured = []
    handle = layer.register_forward_hook(lambda _m, _a, output: captured.append(output.detach()))
    with torch.no_grad():
        logits = module(torch.from_numpy(tensor[None]))
    handle.remove()
    cams = torch.relu(torch.einsum("ck,khw->chw", module.fc.weight.detach(), captured[0][0]))
    return cams.numpy(), softmax(logits.numpy())[0]


@pytest.mark.parametrize("name, layer", [("resnet18_cam", "layer4"), ("gap_cnn_random", "features")])
def test_cam_equals_the_torch_reference(vision, models, name, layer):
    repo, modules = models
    data = astronaut_png()
    tensor, _ = preprocess_encoded(data, load_model_config(repo / name / "config.yaml").preprocessing)
    module = modules[name]
    reference, probabilities = torch_cams(module, module.get_submodule(layer), tensor)
    top1 = int(np.argmax(probabilities))
    for class_index in (None, (top1 + 1) % len(probabilities)):
        result = explain(vision, name, data, **({} if class_index is None else {"class_index": class_index}))
        expected = top1 if class_index is None else class_index
        assert (result.method, result.class_index, result.label) == ("cam", expected, str(expected))
        assert result.score == pytest.approx(probabilities[expected], abs=1e-5)
        raw = tensor_from_proto(result.raw, "raw")
        assert raw.shape == reference.shape[1:] and raw.dtype == np.float32
        assert np.abs(raw - reference[expected]).max() <= 1e-4
        upsampled = tensor_from_proto(result.upsampled, "upsampled")
        assert upsampled.shape == (128, 171) and upsampled.min() >= 0.0 and upsampled.max() <= 1.0
        assert result.overlay == b""
    assert reference.max() > 0.01


def test_gap_cnn_points_at_the_objects_and_draws_overlays(vision):
    """Eight held-out scenes in one request (one batch): maps in request order, on each image."""
    scenes = [make_scene(np.random.default_rng([99, i]), CAM_SCENE_SPEC, "heldout") for i in range(8)]
    images = [vpb.Image(encoded=encode(np.ascontiguousarray(s.image[:, :, ::-1]))) for s in scenes]
    request = vpb.ExplainRequest(
        model=vpb.ModelRef(name="gap_cnn"),
        images=images,
        options=vpb.ExplainOptions(overlay=True, overlay_format="png"),
    )
    maps = vision.Explain(request, timeout=60).maps
    assert len(maps) == len(scenes)
    inside = 0
    for scene, result in zip(scenes, maps):
        heat = tensor_from_proto(result.upsampled, "upsampled")
        assert heat.shape == scene.image.shape[:2] and heat.max() == pytest.approx(1.0)
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        x1, y1, x2, y2 = scene.boxes[0]
        inside += bool(x1 <= col < x2 and y1 <= row < y2)
        assert result.overlay[:4] == b"\x89PNG"
        assert cv2.imdecode(np.frombuffer(result.overlay, np.uint8), cv2.IMREAD_COLOR).shape == scene.image.shape
    assert inside >= 7  # the held-out rate is measured on 300 scenes in tests/export/test_cam_export.py
    jpeg = explain(vision, "gap_cnn", images[0].encoded, overlay=True).overlay
    assert jpeg[:2] == b"\xff\xd8"


def test_classify_with_explain_returns_the_same_map(vision):
    data = astronaut_png()
    alone = explain(vision, "gap_cnn", data, class_index=2)
    request = vpb.ClassifyRequest(
        model=vpb.ModelRef(name="gap_cnn"),
        images=[vpb.Image(encoded=data)] * 2,
        top_k=3,
        explain=True,
        explain_options=vpb.ExplainOptions(class_index=2),
    )
    response = vision.Classify(request, timeout=60)
    assert len(response.results) == 2
    for result in response.results:
        assert len(result.predictions) == 3
        assert result.activation_map.class_index == 2 and result.activation_map.method == "cam"
        np.testing.assert_array_equal(
            tensor_from_proto(result.activation_map.raw, "raw"), tensor_from_proto(alone.raw, "raw")
        )
    plain = vision.Classify(
        vpb.ClassifyRequest(model=vpb.ModelRef(name="gap_cnn"), images=[vpb.Image(encoded=data)]), timeout=60
    )
    assert not plain.results[0].HasField("activation_map")


def test_v2_features_output_gives_the_same_cam(channel, vision, models):
    """The documented V2 route: request `features`, weight it by the ONNX initializer's row."""
    repo = models[0]
    config = load_model_config(repo / "gap_cnn" / "config.yaml")
    tensor, _ = preprocess_encoded(astronaut_png(), config.preprocessing)
    request = ipb.ModelInferRequest(
        model_name="gap_cnn",
        inputs=[ipb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, *tensor.shape])],
        outputs=[ipb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in ("logits", "features")],
        raw_input_contents=[tensor.astype("<f4").tobytes()],
    )
    response = ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    shapes = {o.name: tuple(o.shape) for o in response.outputs}
    assert shapes == {"logits": (1, 5), "features": (1, 64, 16, 16)}
    values = {
        o.name: np.frombuffer(raw, "<f4").reshape(o.shape)
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }
    weights = read_class_weights(repo / "gap_cnn" / "1" / "model.onnx", config.postprocessing.cam.weights_initializer)
    top1 = int(np.argmax(values["logits"][0]))
    v2_cam = np.maximum(np.einsum("k,khw->hw", weights[top1], values["features"][0]), 0)
    served = explain(vision, "gap_cnn", tensor=tensor)
    assert served.class_index == top1
    np.testing.assert_allclose(tensor_from_proto(served.raw, "raw"), v2_cam, atol=1e-5)
    assert tensor_from_proto(served.upsampled, "upsampled").shape == (64, 64)  # a tensor's "original" is itself


def drawn_digit(digit: int) -> np.ndarray:
    """An MNIST-like 28×28 digit: white stroke on black, drawn with OpenCV's Hershey font."""
    canvas = np.zeros((28, 28), dtype=np.uint8)
    cv2.putText(canvas, str(digit), (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2, cv2.LINE_AA)
    return canvas


def score_cam_reference(session, tensor, max_maps):
    """Score-CAM of every class, recomputed with a plain ONNX Runtime session (no server, no batcher)."""
    (activations,) = session.run(["features"], {"input": tensor[None]})
    chosen = cam_math.select_maps(activations[0], max_maps)
    masks = cam_math.score_cam_masks(activations[0], chosen, tensor.shape[1:])
    (logits,) = session.run(["logits"], {"input": cam_math.masked_inputs(tensor, masks)})
    return [cam_math.score_cam_map(activations[0], chosen, logits[:, c]) for c in range(logits.shape[1])]


def test_score_cam_on_lenet5_digits(vision, models):
    repo = models[0]
    data = encode(drawn_digit(7))
    tensor, _ = preprocess_encoded(data, load_model_config(repo / "lenet5_cam" / "config.yaml").preprocessing)
    reference = score_cam_reference(cpu_session((repo / "lenet5_cam" / "1" / "model.onnx").read_bytes()), tensor, 12)
    maps = []
    for class_index in range(10):
        result = explain(vision, "lenet5_cam", data, class_index=class_index)
        raw = tensor_from_proto(result.raw, "raw")
        assert result.method == "score_cam" and raw.shape == (10, 10)
        assert np.isfinite(raw).all() and raw.max() > raw.min()
        np.testing.assert_allclose(raw, reference[class_index], atol=1e-5)
        again = explain(vision, "lenet5_cam", data, class_index=class_index)
        assert again.raw.data == result.raw.data and again.upsampled.data == result.upsampled.data
        assert tensor_from_proto(result.upsampled, "upsampled").shape == (28, 28)
        maps.append(raw)
    assert any(np.abs(maps[0] - m).max() > 1e-6 for m in maps[1:])  # the class changes the map


def test_explain_errors(vision):
    data = astronaut_png()
    cases = [
        ("resnet18_cam", {"class_index": 10}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ("resnet18_cam", {"class_index": -1}, grpc.StatusCode.INVALID_ARGUMENT, "class_index"),
        ("gap_cnn", {"overlay": True, "overlay_format": "gif"}, grpc.StatusCode.INVALID_ARGUMENT, "overlay_format"),
        ("tiny", {}, grpc.StatusCode.FAILED_PRECONDITION, "docs/cam.md"),
        ("no_such_model", {}, grpc.StatusCode.NOT_FOUND, "no_such_model"),
    ]
    for model, options, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            explain(vision, model, data, **options)
        assert info.value.code() == code and text in info.value.details(), (model, options)
    with pytest.raises(grpc.RpcError) as info:
        vision.Classify(
            vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=data)], explain=True),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
