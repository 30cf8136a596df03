"""Every bad request gets a precise gRPC status and a message naming what was wrong.

NOT_FOUND for unknown models and versions; INVALID_ARGUMENT for bad inputs (name, datatype,
shape, undecodable or empty images, images over the pixel limit read from the header);
RESOURCE_EXHAUSTED for messages over the size limit; UNAVAILABLE for a model that failed to load,
while the other models keep serving. After each bad request a good one still succeeds.
"""

from __future__ import annotations

import queue
import resource
import struct
import time
import zlib

import cv2
import grpc
import numpy as np
import pytest

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input, response_outputs
from service.settings import Limits

from testkit import ServerThread, write_tiny_model
from testkit import test_settings as settings_for

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
GOOD = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk claiming width x height, and a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat + b"\x00" * 4


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 frame header claiming width x height (one component), junk, EOI."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\x00" * 32 + b"\xff\xd9"


def png(seed=1) -> bytes:
    ok, data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8))
    return data.tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("errors") / "repo"
    write_tiny_model(repo)
    broken = write_tiny_model(repo, name="broken")
    (broken / "1" / "model.onnx").write_bytes(b"\x08\x07this is not an ONNX protobuf" * 10)
    # strict about NaN/Inf in V2 tensors (off by default, as in Triton) so that error is in the catalogue too
    server = ServerThread(settings_for(repo, limits=Limits(v2_reject_non_finite=True))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def v2(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def vision(channel):
    return vpb_grpc.VisionServiceStub(channel)


def infer(model="tiny", version="", **inputs) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in (inputs or {"input": GOOD}).items():
        append_input(request, name, array)
    return request


def assert_good_request_works(v2, vision):
    outputs = response_outputs(v2.ModelInfer(infer()))
    assert outputs["logits"].shape == (2, 3)
    reply = vision.Classify(vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=png())]))
    assert len(reply.results) == 1


def fails(call, request, code, *fragments):
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    assert error.value.code() == code, error.value.details()
    for fragment in fragments:
        assert fragment in error.value.details(), (fragment, error.value.details())
    return error.value


def typed(datatype, shape, **contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return request


V2_CASES = {
    "unknown model": (infer(model="nope"), NOT_FOUND, ["unknown model 'nope'"]),
    "unknown version": (infer(version="9"), NOT_FOUND, ["'tiny'", "no version 9"]),
    "non-integer version": (infer(version="latest"), NOT_FOUND, ["'tiny'", "'latest'"]),
    "wrong input name": (infer(pixels=GOOD), INVALID, ["unknown input(s) ['pixels']", "['input']"]),
    "extra input": (infer(input=GOOD, extra=GOOD), INVALID, ["unknown input(s) ['extra']"]),
    "no inputs": (pb.ModelInferRequest(model_name="tiny"), INVALID, ["missing input(s) ['input']"]),
    "wrong datatype FP64": (infer(input=GOOD.astype(np.float64)), INVALID, ["input 'input'", "FP64", "FP32"]),
    "wrong datatype INT32": (infer(input=GOOD.astype(np.int32)), INVALID, ["input 'input'", "INT32"]),
    "wrong shape": (
        infer(input=np.zeros((2, 1, 8, 9), np.float32)),
        INVALID,
        ["input 'input'", "[2, 1, 8, 9]", "[-1, 1, 8, 8]"],
    ),
    "wrong rank": (infer(input=np.zeros((2, 64), np.float32)), INVALID, ["input 'input'", "[2, 64]"]),
    "empty batch": (infer(input=np.zeros((0, 1, 8, 8), np.float32)), INVALID, ["input 'input'", "empty batch"]),
    "batch over max": (infer(input=np.zeros((9, 1, 8, 8), np.float32)), INVALID, ["max_batch_size 8"]),
    "NaN values": (infer(input=np.full((1, 1, 8, 8), np.nan, np.float32)), INVALID, ["input 'input'", "NaN"]),
    "raw size mismatch": (
        typed("FP32", [1, 1, 8, 8], fp32_contents=[0.0] * 10),
        INVALID,
        ["input 'input'", "fp32_contents holds 10"],
    ),
    "unknown datatype": (typed("FP8", [1, 1, 8, 8]), INVALID, ["input 'input'", "'FP8'"]),
    "undecodable image": (
        infer(input=np.array([b"definitely not an image"], dtype=object)),
        INVALID,
        ["images[0]", "decode"],
    ),
    "empty image": (infer(input=np.array([png(), b""], dtype=object)), INVALID, ["images[1]", "empty"]),
    "truncated JPEG": (
        infer(input=np.array([cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes()[:-40]], dtype=object)),
        INVALID,
        ["images[0]", "truncated"],
    ),
    "PNG over pixel limit": (
        infer(input=np.array([png_header(100_000, 100_000)], dtype=object)),
        INVALID,
        ["images[0]", "100000x100000", "limit"],
    ),
    "unknown output": (None, INVALID, ["unknown output 'scores'", "['logits']"]),
    "bad classification": (None, INVALID, ["output 'logits'", "classification"]),
}


def _with_outputs():
    unknown = infer()
    unknown.outputs.add(name="scores")
    bad = infer()
    bad.outputs.add(name="logits", parameters={"classification": pb.InferParameter(string_param="two")})
    return {"unknown output": unknown, "bad classification": bad}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_v2_bad_request(v2, vision, case):
    request, code, fragments = V2_CASES[case]
    request = request if request is not None else _with_outputs()[case]
    fails(v2.ModelInfer, request, code, *fragments)
    assert_good_request_works(v2, vision)


def classify(*images, model="tiny", version="", top_k=0):
    return vpb.ClassifyRequest(model=vpb.ModelRef(name=model, version=version), images=list(images), top_k=top_k)


def tensor(array) -> vpb.Image:
    array = np.asarray(array)
    return vpb.Image(tensor=vpb.Tensor(shape=list(array.shape), dtype=array.dtype.name, data=array.tobytes()))


VISION_CASES = {
    "unknown model": (classify(vpb.Image(encoded=png()), model="nope"), NOT_FOUND, ["unknown model 'nope'"]),
    "unknown version": (classify(vpb.Image(encoded=png()), version="3"), NOT_FOUND, ["no version 3"]),
    "no model name": (classify(vpb.Image(encoded=png()), model=""), INVALID, ["model name is empty"]),
    "no images": (classify(), INVALID, ["no images"]),
    "image without source": (classify(vpb.Image(encoded=png()), vpb.Image()), INVALID, ["images[1]", "neither"]),
    "empty image": (classify(vpb.Image(encoded=b"")), INVALID, ["images[0]", "empty"]),
    "undecodable image": (
        classify(vpb.Image(encoded=png()), vpb.Image(encoded=b"\x89PNG\r\n\x1a\n garbage")),
        INVALID,
        ["images[1]"],
    ),
    "tensor wrong shape": (classify(tensor(np.zeros((1, 8, 7), np.float32))), INVALID, ["images[0]", "[1, 8, 7]"]),
    "tensor wrong dtype": (classify(tensor(np.zeros((1, 8, 8), np.float64))), INVALID, ["images[0]", "float32"]),
    "tensor data size": (
        classify(vpb.Image(tensor=vpb.Tensor(shape=[1, 8, 8], dtype="float32", data=b"\x00" * 12))),
        INVALID,
        ["images[0].tensor", "12 data bytes"],
    ),
    "tensor dtype name": (
        classify(vpb.Image(tensor=vpb.Tensor(shape=[1], dtype="complex64", data=b"\x00" * 8))),
        INVALID,
        ["images[0].tensor", "complex64"],
    ),
    "negative top_k": (classify(vpb.Image(encoded=png()), top_k=-1), INVALID, ["top_k", "-1"]),
    "too many images": (classify(*[vpb.Image(encoded=png())] * 9), INVALID, ["9 images", "max_batch_size 8"]),
    "PNG over pixel limit": (
        classify(vpb.Image(encoded=png_header(100_000, 100_000))),
        INVALID,
        ["images[0]", "100000x100000", "limit"],
    ),
    "JPEG over pixel limit": (
        classify(vpb.Image(encoded=jpeg_header(65_000, 65_000))),
        INVALID,
        ["images[0]", "65000x65000", "limit"],
    ),
}


@pytest.mark.parametrize("case", sorted(VISION_CASES))
def test_vision_bad_request(v2, vision, case):
    request, code, fragments = VISION_CASES[case]
    fails(vision.Classify, request, code, *fragments)
    assert_good_request_works(v2, vision)


@pytest.mark.parametrize("rpc", ["ModelMetadata", "ModelConfig", "ModelStatistics"])
def test_metadata_of_unknown_model(v2, rpc):
    request = getattr(pb, f"{rpc}Request")(name="nope")
    fails(getattr(v2, rpc), request, NOT_FOUND, "unknown model 'nope'")
    request = getattr(pb, f"{rpc}Request")(name="tiny", version="5")
    fails(getattr(v2, rpc), request, NOT_FOUND, "no version 5")


def test_pixel_limit_is_checked_from_the_header_without_allocating(v2, vision):
    """10^10 pixels would be 10 GB decoded: the answer must come from the header, fast."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server runs in this process
    started = time.perf_counter()
    fails(vision.Classify, classify(vpb.Image(encoded=png_header(100_000, 100_000))), INVALID, "over the limit")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024
    assert_good_request_works(v2, vision)


def test_failed_model_is_unavailable_and_others_keep_serving(v2, vision):
    error = fails(v2.ModelInfer, infer(model="broken"), grpc.StatusCode.UNAVAILABLE, "model 'broken'", "model.onnx")
    assert "unavailable" in error.details()
    fails(vision.Classify, classify(vpb.Image(encoded=png()), model="broken"), grpc.StatusCode.UNAVAILABLE, "broken")
    assert v2.ModelReady(pb.ModelReadyRequest(name="broken")).ready is False
    assert v2.ModelReady(pb.ModelReadyRequest(name="tiny")).ready is True
    index = {m.name: m for m in v2.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["broken"].state == "UNAVAILABLE" and "model.onnx" in index["broken"].reason
    assert index["tiny"].state == "READY"
    assert_good_request_works(v2, vision)


def test_stream_infer_reports_errors_per_request(v2):
    replies = list(v2.ModelStreamInfer(iter([infer(model="nope"), infer(), infer(version="4"), infer()])))
    assert "unknown model 'nope'" in replies[0].error_message
    assert "no version 4" in replies[2].error_message
    assert replies[1].infer_response.model_name == replies[3].infer_response.model_name == "tiny"


def test_message_over_the_configured_limit(tmp_path):
    """A 1 MiB server limit: a 2 MB request is RESOURCE_EXHAUSTED, a small one still works."""
    write_tiny_model(tmp_path / "repo")
    server = ServerThread(settings_for(tmp_path / "repo", limits=Limits(max_message_bytes=1024 * 1024))).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            vision = vpb_grpc.VisionServiceStub(channel)
            big = infer(input=np.zeros((8, 1, 8, 8), np.float32))
            big.parameters["padding"].string_param = "x" * (2 * 1024 * 1024)
            fails(v2.ModelInfer, big, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
            huge_image = classify(vpb.Image(encoded=png() + b"\x00" * (2 * 1024 * 1024)))
            fails(vision.Classify, huge_image, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert_good_request_works(v2, vision)
    finally:
        server.stop()


def _refused_stream(replies) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        list(replies)
    return refused.value


def _once_a_slot_is_free(open_stream):
    """open_stream()'s result; a slot frees when the server's side of an ended call has finished,
    a moment after the client saw the end, so RESOURCE_EXHAUSTED is retried for up to 2 s."""
    for _ in range(100):
        try:
            return open_stream()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            time.sleep(0.02)
    raise AssertionError("no stream slot became free within 2 s")


def test_streams_of_both_apis_share_the_concurrent_stream_limit(tmp_path):
    """--max-concurrent-streams 2: two open ModelStreamInfer streams take both slots, so a third
    stream of either API is refused with RESOURCE_EXHAUSTED; once one ends, a new stream opens."""
    write_tiny_model(tmp_path / "repo")
    server = ServerThread(settings_for(tmp_path / "repo", limits=Limits(max_concurrent_streams=2))).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            vision = vpb_grpc.VisionServiceStub(channel)
            open_streams = []
            for _ in range(2):
                requests: queue.Queue = queue.Queue()
                requests.put(infer())
                replies = v2.ModelStreamInfer(iter(requests.get, None))
                assert next(replies).infer_response.model_name == "tiny"  # open and served, still writable
                open_streams.append((requests, replies))
            refused = _refused_stream(v2.ModelStreamInfer(iter([infer()])))
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many concurrent streams (limit 2)" in refused.details()
            frame = vpb.ClassifyFrame(model=vpb.ModelRef(name="tiny"), image=vpb.Image(encoded=png()))
            assert _refused_stream(vision.StreamClassify(iter([frame]))).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            requests, replies = open_streams.pop()
            requests.put(None)  # the client finishes writing: the stream ends and frees its slot
            assert list(replies) == []
            answered = _once_a_slot_is_free(lambda: list(v2.ModelStreamInfer(iter([infer()]))))
            assert answered[0].infer_response.model_name == "tiny"
            results = _once_a_slot_is_free(lambda: list(vision.StreamClassify(iter([frame]))))
            assert [r.WhichOneof("outcome") for r in results] == ["result"]
            requests, replies = open_streams.pop()
            requests.put(None)
            assert list(replies) == []
    finally:
        server.stop()
