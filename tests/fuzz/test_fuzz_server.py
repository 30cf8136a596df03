"""Fuzz a real server over gRPC: arbitrary images, tensors and V2 requests, then a good request.

Every reply must be OK or a status that names the client's mistake (never INTERNAL or UNKNOWN,
never a hang past the deadline), and after every fuzzed request the server must still answer a
good request correctly. The server is tests/conftest.py's `tiny_server` (a 3-class 1x8x8 gray
classifier), shared by all examples of a test so that damage would carry over.
"""

from __future__ import annotations

import struct

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc

from .conftest import examples
from .strategies import encoded_images, infer_requests

SERVER = settings(max_examples=examples(0.4), suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
TIMEOUT_S = 30
GOOD_PNG = cv2.imencode(".png", np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)[1].tobytes()
MODEL_NAMES = st.sampled_from(["tiny"] * 6 + ["", "nope", "../tiny", "tiny/1", "TINY"]) | st.text(max_size=6)


@pytest.fixture
def stubs(tiny_server):
    with grpc.insecure_channel(tiny_server.address) as channel:
        yield vpb_grpc.VisionServiceStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)


def status(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=TIMEOUT_S)
    except grpc.RpcError as error:
        assert error.code() not in BAD, f"{error.code().name}: {error.details()}"
        return error.code()
    return grpc.StatusCode.OK


def still_serving(vision) -> None:
    request = vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=GOOD_PNG)])
    reply = vision.Classify(request, timeout=TIMEOUT_S)
    assert len(reply.results) == 1 and len(reply.results[0].predictions) == 2


# --- vision API ----------------------------------------------------------------------------------


@st.composite
def tensors(draw) -> vpb.Tensor:
    """Image.tensor messages: right or wrong dtype, shape and data length, including huge shapes."""
    dtype = draw(
        st.sampled_from(["float32"] * 4 + ["float16", "float64", "uint8", "int32", "int64", "bool", "", "complex64"])
    )
    shape = draw(
        st.sampled_from([[1, 8, 8], [3, 8, 8], [1, 4, 4], [8, 8], [], [0, 8, 8]])
        | st.lists(st.sampled_from([0, 1, 8, 2**31, 2**32, 2**62, -1]), max_size=4)
    )
    itemsize = {"float16": 2, "float64": 8, "uint8": 1, "int64": 8, "bool": 1}.get(dtype, 4)
    sizes = [d for d in shape if 0 <= d <= 64]
    exact = int(np.prod(sizes)) * itemsize if len(sizes) == len(shape) else 0
    data = draw(st.binary(min_size=exact, max_size=exact) | st.binary(max_size=32))
    return vpb.Tensor(dtype=dtype, shape=shape, data=data)


image_messages = st.builds(lambda data: vpb.Image(encoded=data), encoded_images()) | st.builds(
    lambda t: vpb.Image(tensor=t), tensors()
)


@SERVER
@given(
    model=MODEL_NAMES,
    images=st.lists(image_messages, max_size=3),
    top_k=st.sampled_from([0, 1, 2, 3, 100, -1, 2**31 - 1]),
)
# Image.tensor shapes whose int64 element count wraps to 0: numpy's ValueError came back as INTERNAL.
@example(model="tiny", images=[vpb.Image(tensor=vpb.Tensor(dtype="float32", shape=[2**32, 2**32], data=b""))], top_k=0)
@example(model="tiny", images=[vpb.Image(tensor=vpb.Tensor(dtype="uint8", shape=[0, 2**62], data=b""))], top_k=0)
def test_classify_arbitrary_images(stubs, model, images, top_k):
    vision, _ = stubs
    request = vpb.ClassifyRequest(model=vpb.ModelRef(name=model), images=images, top_k=top_k)
    status(vision.Classify, request)
    still_serving(vision)


@SERVER
@given(
    frames=st.lists(st.tuples(MODEL_NAMES, image_messages, st.integers(-1, 3)), min_size=1, max_size=4),
    drop=st.booleans(),
    max_pending=st.sampled_from([0, 1, 2, -1]),
)
@example(
    frames=[("tiny", vpb.Image(tensor=vpb.Tensor(dtype="float32", shape=[0, 2**31, 2**31])), 0)],
    drop=False,
    max_pending=0,
)
def test_stream_classify_arbitrary_frames(stubs, frames, drop, max_pending):
    vision, _ = stubs
    options = vpb.StreamOptions(drop_frames=drop, max_pending=max_pending)
    requests = [
        vpb.ClassifyFrame(
            model=vpb.ModelRef(name=name), frame_id=i, image=image, top_k=top_k, options=options if i == 0 else None
        )
        for i, (name, image, top_k) in enumerate(frames)
    ]
    try:
        for result in vision.StreamClassify(iter(requests), timeout=TIMEOUT_S):
            if result.HasField("error"):
                assert grpc.StatusCode(_code(result.error.code)) not in BAD, result.error.message
    except grpc.RpcError as error:
        assert error.code() not in BAD, f"{error.code().name}: {error.details()}"
    still_serving(vision)


def _code(number: int) -> tuple:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


# --- Open Inference Protocol ---------------------------------------------------------------------


@st.composite
def near_valid_requests(draw) -> pb.ModelInferRequest:
    """Requests the tiny model could accept: FP32 [N, 1, 8, 8] of any bits, or BYTES [N] of any files."""
    request = pb.ModelInferRequest(model_name="tiny")
    n = draw(st.integers(1, 3))
    if draw(st.booleans()):
        array = draw(hnp.arrays(np.float32, (n, 1, 8, 8), elements=st.floats(width=32)))
        request.inputs.add(name="input", datatype="FP32", shape=[n, 1, 8, 8])
        request.raw_input_contents.append(array.tobytes())
    else:
        files = [draw(encoded_images()) for _ in range(n)]
        request.inputs.add(name="input", datatype="BYTES", shape=[n])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(f)) + f for f in files))
    return request


@SERVER
@given(request=infer_requests(MODEL_NAMES) | near_valid_requests())
def test_model_infer_arbitrary_requests(stubs, request):
    vision, inference = stubs
    status(inference.ModelInfer, request)
    still_serving(vision)


# --- repository API ------------------------------------------------------------------------------

REPOSITORY_NAMES = st.sampled_from(
    ["tiny", "..", ".", "../repo", "./tiny", ".hidden", "_private", "tiny/..", ""]
) | st.text(max_size=8)


@SERVER
@given(name=REPOSITORY_NAMES)
# ".." named the repository's parent directory: it was scanned and left an UNAVAILABLE entry "..".
@example(name="..")
def test_repository_load_of_any_name_stays_inside_the_repository(stubs, tiny_repo, name):
    vision, inference = stubs
    status(inference.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name))
    index = inference.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
    real = {p.name for p in tiny_repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert {model.name for model in index.models} <= real
    still_serving(vision)
