"""Segment (vision API) and V2 ModelInfer on the bundled fcn8s, served by a real server.

The served answers are checked against ONNX Runtime run in this process on the same preprocessed
tensors (label maps = argmax of bilinearly resized logits, torch's interpolation as the reference),
and the held-out mean IoU recorded in the model card is re-measured through gRPC.
"""

from __future__ import annotations

import json
import shutil

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from export.evaluate.segmenter import heldout_scenes
from export.evaluate.segmentation_metrics import confusion_matrix, mean_iou
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import dump_model_config, load_model_config
from service.preprocess import preprocess_image
from service.servicers.v2_tensors import append_input, response_outputs
from service.servicers.vision_convert import tensor_from_proto, tensor_to_proto

from testkit import BUNDLED_REPO, ServerThread, copy_bundled_model, write_tiny_model
from testkit import test_settings as settings_for

CARD = json.loads((BUNDLED_REPO / "fcn8s" / "1" / "model_card.json").read_text())
LABELS = (BUNDLED_REPO / "fcn8s" / "labels.txt").read_text().split()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """fcn8s as bundled (native size scaled by native_scale, padded to stride 32), copies stretched to a fixed
    96x96 and at native size unscaled, and a classifier."""
    repo = tmp_path_factory.mktemp("segment") / "repo"
    copy_bundled_model("fcn8s", repo)
    variants = {
        "fcn8s_stretch": {"resize": "stretch", "size": (96, 96), "stride": 1, "native_scale": 1.0},
        "fcn8s_unscaled": {"native_scale": 1.0},
    }
    for name, update in variants.items():
        shutil.copytree(BUNDLED_REPO / "fcn8s", repo / name)
        config = load_model_config(repo / name / "config.yaml")
        preprocessing = config.preprocessing.model_copy(update=update)
        dump_model_config(
            config.model_copy(update={"name": name, "preprocessing": preprocessing}), repo / name / "config.yaml"
        )
    write_tiny_model(repo)
    return repo


@pytest.fixture(scope="module")
def server(repo):
    server = ServerThread(settings_for(repo)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return vpb_grpc.VisionServiceStub(channel)


@pytest.fixture(scope="module")
def session(repo):
    return ort.InferenceSession(str(repo / "fcn8s" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def scene_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A held-out-style scene of an odd size, RGB uint8."""
    from export.data.scenes import SceneSpec, make_scene

    side = min(height, width)
    spec = SceneSpec(
        height=(height, height), width=(width, width), objects=(2, 4), object_size=(min(14, side), min(40, side))
    )
    return make_scene(np.random.default_rng(seed), spec, "heldout").image


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def segment(stub, model: str, images: list[bytes], **flags) -> vpb.SegmentResponse:
    request = vpb.SegmentRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=i) for i in images], **flags)
    return stub.Segment(request, timeout=120)


def decode_labels(result: vpb.SegmentResult) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(result.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)


def reference_labels(session, repo, model: str, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, top-2 margin): this process's ONNX Runtime logits, cropped of padding, resized by torch."""
    spec = load_model_config(repo / model / "config.yaml").preprocessing
    tensor, info = preprocess_image(rgb, spec, source_order="rgb")
    logits = torch.from_numpy(session.run(None, {"input": tensor[None]})[0]).double()
    top, left, bottom, right = info.content_window()
    resized = F.interpolate(
        logits[:, :, top:bottom, left:right], size=rgb.shape[:2], mode="bilinear", align_corners=False
    )[0]
    top2 = resized.topk(2, dim=0).values
    return resized.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


@pytest.mark.parametrize("model", ["fcn8s", "fcn8s_stretch", "fcn8s_unscaled"])
@pytest.mark.parametrize("hw", [(97, 131), (33, 250)])
def test_label_map_has_the_original_size_and_matches_onnxruntime(stub, session, repo, model, hw):
    rgb = scene_image(*hw, seed=hw[0])
    (result,) = segment(stub, model, [png(rgb)]).results
    labels = decode_labels(result)
    assert labels.shape == hw and labels.dtype == np.uint8
    assert (result.height, result.width) == hw
    assert labels.max() < len(LABELS)
    expected, margin = reference_labels(session, repo, model, rgb)
    decided = margin > 1e-4
    np.testing.assert_array_equal(labels[decided], expected[decided])
    counts = np.bincount(labels.ravel(), minlength=len(LABELS))
    assert [c.class_index for c in result.classes] == list(np.flatnonzero(counts))
    for item in result.classes:
        assert item.label == LABELS[item.class_index] and item.pixels == counts[item.class_index]
        assert item.fraction == pytest.approx(counts[item.class_index] / labels.size)
    assert not result.overlay_png and not result.HasField("probabilities")


def test_native_mode_pads_to_the_stride_and_removes_the_padding(stub, session, repo):
    """Unscaled, 97x131 is padded to 128x160 for the network; the answer is the unpadded logits' argmax, exactly."""
    rgb = scene_image(97, 131, seed=5)
    spec = load_model_config(repo / "fcn8s_unscaled" / "config.yaml").preprocessing
    tensor, info = preprocess_image(rgb, spec, source_order="rgb")
    assert tensor.shape == (3, 128, 160) and info.content_window() == (0, 0, 97, 131)
    logits = session.run(None, {"input": tensor[None]})[0][0]
    (result,) = segment(stub, "fcn8s_unscaled", [png(rgb)], probabilities=True).results
    content = np.sort(logits[:, :97, :131], axis=0)
    decided = content[-1] - content[-2] > 1e-4  # another thread count may only flip exact ties
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(decode_labels(result)[decided], logits[:, :97, :131].argmax(0)[decided])
    probabilities = tensor_from_proto(result.probabilities, "probabilities")
    assert probabilities.shape == (len(LABELS), 97, 131)
    np.testing.assert_allclose(probabilities, torch.from_numpy(logits[:, :97, :131]).softmax(0).numpy(), atol=1e-5)


def test_native_scale_upscales_pads_and_answers_at_the_original_size(stub, session, repo):
    """Bundled fcn8s (native_scale > 1): 97x131 is scaled, padded to the stride 32; probabilities cover
    the scaled content at model resolution, the label map is back at 97x131."""
    rgb = scene_image(97, 131, seed=6)
    spec = load_model_config(repo / "fcn8s" / "config.yaml").preprocessing
    assert spec.native_scale > 1 and spec.stride == 32
    rows, cols = round(97 * spec.native_scale), round(131 * spec.native_scale)
    tensor, info = preprocess_image(rgb, spec, source_order="rgb")
    assert tensor.shape == (3, -(-rows // 32) * 32, -(-cols // 32) * 32) and info.content_window() == (0, 0, rows, cols)
    assert tensor.shape[1] - rows < 32 and tensor.shape[2] - cols < 32
    logits = session.run(None, {"input": tensor[None]})[0][0]
    (result,) = segment(stub, "fcn8s", [png(rgb)], probabilities=True).results
    assert decode_labels(result).shape == (97, 131)
    probabilities = tensor_from_proto(result.probabilities, "probabilities")
    assert probabilities.shape == (len(LABELS), rows, cols)
    np.testing.assert_allclose(probabilities, torch.from_numpy(logits[:, :rows, :cols]).softmax(0).numpy(), atol=1e-5)


def test_stretch_mode_probabilities_are_at_model_resolution(stub):
    (result,) = segment(stub, "fcn8s_stretch", [png(scene_image(97, 131))], probabilities=True).results
    probabilities = tensor_from_proto(result.probabilities, "probabilities")
    assert probabilities.shape == (len(LABELS), 96, 96)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)


def test_overlay_is_an_rgb_png_of_the_original_size(stub):
    rgb = scene_image(97, 131, seed=3)
    (result,) = segment(stub, "fcn8s", [png(rgb)], overlay=True).results
    overlay = cv2.imdecode(np.frombuffer(result.overlay_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (97, 131, 3)
    background = decode_labels(result) == 0
    np.testing.assert_array_equal(overlay[background], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)[background])


def test_several_sizes_in_one_request_keep_their_order(stub):
    sizes = [(64, 64), (97, 131), (64, 64), (50, 70)]
    response = segment(stub, "fcn8s", [png(scene_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)])
    assert [decode_labels(r).shape for r in response.results] == sizes
    assert response.model_name == "fcn8s" and response.model_version == "1"


def test_tensor_images_and_errors(stub):
    tensor = np.zeros((3, 64, 96), np.float32)
    request = vpb.SegmentRequest(model=vpb.ModelRef(name="fcn8s"), images=[vpb.Image(tensor=tensor_to_proto(tensor))])
    assert decode_labels(stub.Segment(request).results[0]).shape == (64, 96)
    request.overlay = True
    with pytest.raises(grpc.RpcError) as error:
        stub.Segment(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        segment(stub, "tiny", [png(scene_image(40, 40))])
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as error:
        segment(stub, "fcn8s", [b"not an image"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_v2_model_infer_returns_the_raw_logits(channel, session):
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="fcn8s")
    append_input(request, "input", x)
    logits = response_outputs(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request))["logits"]
    assert logits.shape == (2, len(LABELS), 64, 96)
    np.testing.assert_allclose(logits, session.run(None, {"input": x})[0], atol=1e-4)


@pytest.mark.slow
def test_heldout_mean_iou_through_the_service_meets_the_model_card(stub):
    evaluation = CARD["evaluation"]
    recorded = evaluation["results"]["fcn8s"]["mean_iou"]
    assert evaluation["scenes"] >= 200
    scenes = heldout_scenes(evaluation["scenes"], evaluation["seed"])
    confusion = np.zeros((len(LABELS), len(LABELS)), np.int64)
    for start in range(0, len(scenes), 16):
        chunk = scenes[start : start + 16]
        for scene, result in zip(chunk, segment(stub, "fcn8s", [png(s.image) for s in chunk]).results):
            labels = decode_labels(result)
            assert labels.shape == scene.label_map.shape
            confusion += confusion_matrix(scene.label_map, labels, len(LABELS))
    measured = mean_iou(confusion)
    assert measured >= recorded - 0.002, f"served mIoU {measured:.4f} < recorded {recorded:.4f}"
