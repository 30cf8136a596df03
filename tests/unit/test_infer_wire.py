"""split_infer_request gives what protobuf's parser gives, with the tensor bytes as views of the
received message, and never more than protobuf would accept."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument
from service.servicers import infer_wire
from service.servicers.infer_wire import WHOLE_PARSE_MAX_BYTES
from service.servicers.infer_wire import split_infer_request as split_as_served


def split_infer_request(data: bytes) -> infer_wire.InferRequestWire:
    """The walk itself, whatever the message's size (the server parses small messages whole)."""
    return split_as_served(data, whole_parse_max_bytes=0)


def _request(contents: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", model_version="2", id="req-1")
    request.parameters["priority"].int64_param = 3
    request.parameters["note"].string_param = "x" * 300
    for index, data in enumerate(contents):
        tensor = request.inputs.add(name=f"in{index}", datatype="FP32", shape=[1, len(data) // 4])
        tensor.parameters["binary_data_size"].int64_param = len(data)
    request.outputs.add(name="logits").parameters["classification"].int64_param = 2
    request.raw_input_contents.extend(contents)
    return request


def _same(wire: infer_wire.InferRequestWire, request: pb.ModelInferRequest) -> None:
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert wire.message == expected
    assert [bytes(view) for view in wire.raw_input_contents] == list(request.raw_input_contents)


@pytest.mark.parametrize("contents", [[], [b""], [np.arange(150_528, dtype=np.float32).tobytes()], [b"ab" * 8, b"cd"]])
def test_split_equals_protobufs_parse_and_keeps_views(contents):
    request = _request(contents)
    data = request.SerializeToString()
    wire = split_infer_request(data)
    _same(wire, request)
    for view in wire.raw_input_contents:
        assert isinstance(view, memoryview) and view.obj is data  # no copy of the tensor bytes


def test_fields_in_any_order_and_interleaved_contents_are_read_alike():
    """Protobuf allows fields in any order and a repeated field's entries among other fields."""
    request = _request([b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"])
    parts = [
        pb.ModelInferRequest(raw_input_contents=[b"\x01\x02\x03\x04"]).SerializeToString(),
        pb.ModelInferRequest(model_name="digits", inputs=request.inputs[:1]).SerializeToString(),
        pb.ModelInferRequest(raw_input_contents=[b"\x05\x06\x07\x08"]).SerializeToString(),
        pb.ModelInferRequest(model_version="2", id="req-1", inputs=request.inputs[1:]).SerializeToString(),
        pb.ModelInferRequest(parameters=request.parameters, outputs=request.outputs).SerializeToString(),
    ]
    data = b"".join(parts)
    reference = pb.ModelInferRequest.FromString(data)
    assert reference == request
    _same(split_infer_request(data), reference)


def test_unknown_fields_of_every_wire_type_pass_like_protobufs():
    known = _request([b"\x00" * 8]).SerializeToString()
    unknown = bytes([0x40 | 0, 0x96, 0x01])  # field 8, varint 150
    unknown += bytes([0x48 | 1]) + b"\x00" * 8  # field 9, fixed64
    unknown += bytes([0x50 | 5]) + b"\x00" * 4  # field 10, fixed32
    unknown += bytes([0x58 | 2, 3]) + b"abc"  # field 11, length-delimited
    data = unknown + known
    _same(split_infer_request(data), pb.ModelInferRequest.FromString(data))


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\x80",  # field 7 with a truncated length
        b"\x3a\x05ab",  # field 7 claiming 5 bytes, 2 there
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint length
        b"\x0a\x03\xff\xfe\xfd",  # model_name that is not UTF-8
        b"\x0f",  # wire type 7 does not exist
        b"\x0b\x0c",  # a group (wire type 3/4)
    ],
)
def test_what_protobuf_refuses_is_invalid_argument(data):
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        with pytest.raises(InvalidArgument, match="not a valid ModelInferRequest"):
            split_infer_request(data)
    else:  # protobuf accepts it (e.g. an empty group): so does the split, with the same result
        _same(split_infer_request(data), pb.ModelInferRequest.FromString(data))


def test_more_fields_than_the_walk_looks_at_are_parsed_whole(monkeypatch):
    """A message of many tiny fields costs protobuf's C parser, not a Python loop per field."""
    request = _request([b"\x00" * 4] * 20)
    data = request.SerializeToString()
    monkeypatch.setattr(infer_wire, "MAX_TOP_LEVEL_FIELDS", 8)
    wire = split_infer_request(data)
    _same(wire, request)
    assert wire.raw_input_contents[0].obj is not data  # protobuf's copies: the bounded fallback ran


def test_small_messages_are_parsed_whole_and_large_ones_keep_views():
    """Below the threshold protobuf's copies are cheaper than the walk; the request is the same."""
    small = _request([b"\x01" * 64])
    data = small.SerializeToString()
    assert len(data) <= WHOLE_PARSE_MAX_BYTES
    wire = split_as_served(data)
    _same(wire, small)
    assert wire.raw_input_contents[0].obj is not data
    large = _request([np.zeros(WHOLE_PARSE_MAX_BYTES // 4 + 1, np.float32).tobytes()])
    data = large.SerializeToString()
    wire = split_as_served(data)
    _same(wire, large)
    assert wire.raw_input_contents[0].obj is data


@pytest.mark.parametrize("offset", range(4))
def test_contents_at_any_byte_offset_are_views_and_become_aligned_arrays_with_the_same_values(offset):
    """Where the tensor bytes sit inside the message depends on the fields before them. Decoding
    keeps them where they are (a refused request costs no copy); arrays not aligned to their element
    size give ONNX Runtime other last digits, so the inputs that pass the model's checks are aligned."""
    from service.dtypes import aligned
    from service.servicers.v2_tensors import decode_raw

    values = np.random.default_rng(offset).random((1, 3, 8, 8), dtype=np.float32)
    request = _request([values.tobytes()])
    request.id = "x" * offset  # moves every later field by `offset` bytes
    data = request.SerializeToString()
    wire = split_infer_request(data)
    view = decode_raw(wire.raw_input_contents[0], "FP32", values.shape)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8))  # no copy while decoding
    np.testing.assert_array_equal(view, values)
    array = aligned(view)
    assert array.flags.aligned and array.ctypes.data % 4 == 0
    assert (array is view) == view.flags.aligned
    np.testing.assert_array_equal(array, values)
