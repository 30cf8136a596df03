"""The bad-input matrix: each malformed request gets its precise status, and the server keeps serving.

Every case is followed by a good request that must succeed, so no bad input can poison the
server or the next client.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from bad_input_models import write_rgb_and_detector
from testkit import ServerThread, test_settings, write_tiny_model
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input
from service.settings import Limits

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


PHOTO = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)


def _huge_png_header() -> bytes:
    """A PNG whose IHDR claims 100000 x 100000 pixels, followed by a scrap of data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(PHOTO).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _classify(model="tiny", images=(), top_k=0, version=""):
    return vpb.ClassifyRequest(model=vpb.ModelRef(name=model, version=version), images=list(images), top_k=top_k)


def _encoded(data: bytes) -> vpb.Image:
    return vpb.Image(encoded=data)


def _tensor(array: np.ndarray, dtype: str | None = None, data: bytes | None = None) -> vpb.Image:
    return vpb.Image(
        tensor=vpb.Tensor(
            shape=list(array.shape), dtype=dtype or array.dtype.name, data=array.tobytes() if data is None else data
        )
    )


def _v2(model="tiny", arrays=None, outputs=(), raw=True):
    request = pb.ModelInferRequest(model_name=model)
    for name, array in (arrays if arrays is not None else {"input": np.zeros((1, 1, 8, 8), np.float32)}).items():
        append_input(request, name, array)
    for name, params in outputs:
        out = request.outputs.add(name=name)
        for key, value in params.items():
            out.parameters[key].int64_param = value
    return request


def _detect(score=None, iou=None, max_det=None, classes=()):
    params = vpb.DetectParams(class_filter=list(classes))
    if score is not None:
        params.score_threshold = score
    if iou is not None:
        params.iou_threshold = iou
    if max_det is not None:
        params.max_detections = max_det
    return vpb.DetectRequest(model=vpb.ModelRef(name="det"), images=[_encoded(_jpeg(PHOTO))], params=params)


GOOD_TENSOR = np.full((1, 8, 8), 0.5, np.float32)


def _mixed_v2():
    request = _v2()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    return request


def _duplicate_inputs():
    request = _v2()
    append_input(request, "input", np.zeros((1, 1, 8, 8), np.float32))
    return request


def _wrong_byte_length():
    request = _v2()
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


# (case id, RPC name, request factory, expected code, message fragment)
CASES = [
    ("empty image bytes", "Classify", lambda: _classify(images=[_encoded(b"")]), INVALID, "empty"),
    (
        "random bytes",
        "Classify",
        lambda: _classify(images=[_encoded(np.random.default_rng(0).bytes(500))]),
        INVALID,
        "could not be decoded",
    ),
    ("truncated JPEG", "Classify", lambda: _classify(images=[_encoded(_jpeg(PHOTO)[:300])]), INVALID, "truncated"),
    ("truncated PNG", "Classify", lambda: _classify(images=[_encoded(_png(PHOTO)[:200])]), INVALID, "decode"),
    (
        "PNG header claiming 100k x 100k",
        "Classify",
        lambda: _classify(images=[_encoded(_huge_png_header())]),
        INVALID,
        "over the limit",
    ),
    ("no image in the request", "Classify", lambda: _classify(images=[]), INVALID, "no images"),
    ("image with neither bytes nor tensor", "Classify", lambda: _classify(images=[vpb.Image()]), INVALID, "neither"),
    ("1x1 image is accepted", "Classify", lambda: _classify(images=[_encoded(_png(PHOTO[:1, :1]))]), OK, ""),
    (
        "16-bit PNG is accepted",
        "Classify",
        lambda: _classify(images=[_encoded(_png((PHOTO.astype(np.uint16) * 257)))]),
        OK,
        "",
    ),
    (
        "4-channel PNG is accepted",
        "Classify",
        lambda: _classify(images=[_encoded(_png(cv2.cvtColor(PHOTO, cv2.COLOR_BGR2BGRA)))]),
        OK,
        "",
    ),
    ("grayscale into an RGB model", "Classify", lambda: _classify("rgb", [_encoded(_png(PHOTO[:, :, 0]))]), OK, ""),
    ("CMYK JPEG is accepted", "Classify", lambda: _classify("rgb", [_encoded(_cmyk_jpeg())]), OK, ""),
    (
        "tensor of the wrong dtype",
        "Classify",
        lambda: _classify(images=[_tensor(GOOD_TENSOR.astype(np.float64))]),
        INVALID,
        "float32",
    ),
    ("tensor of the wrong rank", "Classify", lambda: _classify(images=[_tensor(GOOD_TENSOR[0])]), INVALID, "shape"),
    (
        "tensor of the wrong shape",
        "Classify",
        lambda: _classify(images=[_tensor(np.zeros((1, 9, 8), np.float32))]),
        INVALID,
        "shape",
    ),
    (
        "tensor bytes do not match its shape",
        "Classify",
        lambda: _classify(images=[_tensor(GOOD_TENSOR, data=b"\x00" * 12)]),
        INVALID,
        "bytes",
    ),
    (
        "NaN tensor",
        "Classify",
        lambda: _classify(images=[_tensor(np.full((1, 8, 8), np.nan, np.float32))]),
        INVALID,
        "NaN",
    ),
    (
        "Inf V2 tensor",
        "ModelInfer",
        lambda: _v2(arrays={"input": np.full((1, 1, 8, 8), np.inf, np.float32)}),
        INVALID,
        "NaN or Inf",
    ),
    (
        "batch larger than max_batch_size",
        "Classify",
        lambda: _classify("rgb", [_tensor(np.zeros((3, 8, 8), np.float32))] * 5),
        INVALID,
        "max_batch_size",
    ),
    (
        "V2 batch larger than max_batch_size",
        "ModelInfer",
        lambda: _v2(arrays={"input": np.zeros((9, 1, 8, 8), np.float32)}),
        INVALID,
        "max_batch_size",
    ),
    ("negative top_k", "Classify", lambda: _classify(images=[_tensor(GOOD_TENSOR)], top_k=-1), INVALID, "top_k"),
    (
        "huge top_k returns every class",
        "Classify",
        lambda: _classify(images=[_tensor(GOOD_TENSOR)], top_k=2**31 - 1),
        OK,
        "",
    ),
    ("IoU threshold above 1", "Detect", lambda: _detect(iou=1.5), INVALID, "iou_threshold"),
    ("score threshold below 0", "Detect", lambda: _detect(score=-0.1), INVALID, "score_threshold"),
    ("max_detections of 0", "Detect", lambda: _detect(max_det=0), INVALID, "max_detections"),
    ("class filter beyond the classes", "Detect", lambda: _detect(classes=[7]), INVALID, "class"),
    (
        "Detect on a classification model",
        "Detect",
        lambda: vpb.DetectRequest(model=vpb.ModelRef(name="tiny"), images=[_tensor(GOOD_TENSOR)]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "classification model",
    ),
    (
        "unknown model",
        "Classify",
        lambda: _classify("nosuchmodel", [_tensor(GOOD_TENSOR)]),
        grpc.StatusCode.NOT_FOUND,
        "unknown model",
    ),
    (
        "unknown version",
        "Classify",
        lambda: _classify(images=[_tensor(GOOD_TENSOR)], version="7"),
        grpc.StatusCode.NOT_FOUND,
        "no version 7",
    ),
    (
        "non-numeric version",
        "ModelInfer",
        lambda: pb.ModelInferRequest(model_name="tiny", model_version="latest"),
        grpc.StatusCode.NOT_FOUND,
        "version",
    ),
    ("empty model name", "Classify", lambda: _classify("", [_tensor(GOOD_TENSOR)]), INVALID, "model name"),
    (
        "unknown input name",
        "ModelInfer",
        lambda: _v2(arrays={"pixels": np.zeros((1, 1, 8, 8), np.float32)}),
        INVALID,
        "unknown input",
    ),
    ("missing input", "ModelInfer", lambda: pb.ModelInferRequest(model_name="tiny"), INVALID, "missing input"),
    ("unknown output name", "ModelInfer", lambda: _v2(outputs=[("probs", {})]), INVALID, "unknown output"),
    (
        "negative classification count",
        "ModelInfer",
        lambda: _v2(outputs=[("logits", {"classification": -2})]),
        INVALID,
        "classification",
    ),
    ("duplicate input names", "ModelInfer", _duplicate_inputs, INVALID, "more than once"),
    (
        "wrong V2 dtype",
        "ModelInfer",
        lambda: _v2(arrays={"input": np.zeros((1, 1, 8, 8), np.float64)}),
        INVALID,
        "FP64",
    ),
    ("wrong V2 shape", "ModelInfer", lambda: _v2(arrays={"input": np.zeros((1, 8, 8), np.float32)}), INVALID, "shape"),
    ("raw byte length wrong", "ModelInfer", _wrong_byte_length, INVALID, "input"),
    ("mixing typed and raw contents", "ModelInfer", _mixed_v2, INVALID, "raw"),
    (
        "BYTES input that is not an image",
        "ModelInfer",
        lambda: _v2(arrays={"input": np.array([b"not an image"], dtype=object)}),
        INVALID,
        "could not be decoded",
    ),
    ("message over the size limit", "ModelInfer", lambda: _oversized(), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (
        "too many images per request",
        "Classify",
        lambda: _classify(images=[_tensor(GOOD_TENSOR)] * 7),
        INVALID,
        "limit of 6",
    ),
]


def _oversized():
    request = _v2()
    request.id = "x" * (5 * 1024 * 1024)
    return request


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("matrix") / "repo"
    write_tiny_model(repo)
    write_tiny_model(repo, "victim")
    write_rgb_and_detector(repo)
    limits = Limits(max_message_bytes=4 * 1024 * 1024, max_images_per_request=6, v2_reject_non_finite=True)
    server = ServerThread(test_settings(repo, limits=limits, http_port=0)).start()  # HTTP: test_bad_inputs_http.py
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    yield server, vpb_grpc.VisionServiceStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    server.stop()


def _call(stubs, rpc: str, request):
    vision, v2 = stubs
    stub = v2 if rpc == "ModelInfer" else vision
    try:
        getattr(stub, rpc)(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _good_request_succeeds(stubs):
    vision, v2 = stubs
    reply = vision.Classify(_classify(images=[_encoded(_png(PHOTO))]), timeout=30)
    assert reply.results[0].predictions
    assert v2.ModelInfer(_v2(), timeout=30).outputs[0].shape == [1, 3]


def test_matrix_has_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,rpc,factory,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(matrix_server, name, rpc, factory, code, fragment):
    _, vision, v2 = matrix_server
    started = time.perf_counter()
    got_code, details = _call((vision, v2), rpc, factory())
    elapsed = time.perf_counter() - started
    assert got_code == code, f"{name}: expected {code.name}, got {got_code.name}: {details}"
    assert fragment.lower() in details.lower(), f"{name}: {details!r} lacks {fragment!r}"
    if "100k" in name:
        assert elapsed < 2.0, "the pixel limit must be enforced from the header, before decoding"
    _good_request_succeeds((vision, v2))


def test_model_being_unloaded_is_unavailable(matrix_server):
    server, vision, v2 = matrix_server
    v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="victim"), timeout=60)
    code, details = _call((vision, v2), "Classify", _classify("victim", [_tensor(GOOD_TENSOR)]))
    assert code == grpc.StatusCode.UNAVAILABLE and "unload" in details
    _good_request_succeeds((vision, v2))


def test_stream_with_garbage_between_good_frames(matrix_server):
    _, vision, v2 = matrix_server
    payloads = [_png(PHOTO), b"garbage", _png(PHOTO), b"", _png(PHOTO), _jpeg(PHOTO)[:100], _png(PHOTO)]

    def frames():
        for index, data in enumerate(payloads):
            yield vpb.ClassifyFrame(
                model=vpb.ModelRef(name="tiny") if index == 0 else None, frame_id=index, image=vpb.Image(encoded=data)
            )

    results = list(vision.StreamClassify(frames(), timeout=60))
    assert [r.frame_id for r in results] == list(range(len(payloads)))
    outcomes = [r.WhichOneof("outcome") for r in results]
    assert outcomes == ["result", "error", "result", "error", "result", "error", "result"]
    assert all(r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in results if r.HasField("error"))
    _good_request_succeeds((vision, v2))
