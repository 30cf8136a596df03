"""The HTTP front end's pure converters: V2 JSON tensors, the binary extension, protobuf JSON, statuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import model_config_pb2 as mc
from service.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError, Unavailable
from service.http.binary import join_body, split_body, take_blobs
from service.http.proto_json import message_to_json
from service.http.status import HTTP_STATUS, BodyTooLarge, http_status_of
from service.http.v2_json import infer_response, json_tensor, load_json, parse_infer_request


def test_element_bound_is_checked_before_parsing():
    with pytest.raises(ResourceExhausted, match="limit of 10"):
        load_json(b"[" + b"0," * 10 + b"0]", 10)
    assert load_json(b"[0,1,2]", 10) == [0, 1, 2]
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        load_json(b"[" * 200_000 + b"]" * 200_000, 10)


@pytest.mark.parametrize(
    "data,datatype,shape,expected",
    [
        ([1, 2, 3, 4], "FP32", [2, 2], np.array([[1, 2], [3, 4]], np.float32)),
        ([[1, 2], [3, 4]], "INT64", [2, 2], np.array([[1, 2], [3, 4]], np.int64)),
        ([True, False], "BOOL", [2], np.array([True, False])),
        (["ab", "c"], "BYTES", [2], np.array([b"ab", b"c"], dtype=object)),
    ],
)
def test_json_tensors(data, datatype, shape, expected):
    array = json_tensor(data, datatype, shape, "t")
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert array.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "data,datatype,fragment",
    [
        ([1.5, 2.0], "INT32", "must be integers"),
        ([300, 1], "INT8", "outside the range"),
        ([1, 0], "BOOL", "true/false"),
        (["a", "b"], "FP32", "strings"),
        ([1, 2, 3], "FP32", "3 elements"),
        ([[1], [2, 3]], "FP32", "ragged"),
        ([1, 2], "BYTES", "strings"),
    ],
)
def test_json_tensor_refusals(data, datatype, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        json_tensor(data, datatype, [2], "t")


def test_binary_body_round_trip():
    tensor = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps(
        {
            "id": "r1",
            "parameters": {"binary_data_output": True},
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": tensor.nbytes}},
                {"name": "y", "datatype": "INT32", "shape": [1], "data": [7]},
            ],
            "outputs": [{"name": "out", "parameters": {"classification": 2}}],
        }
    ).encode()
    request = parse_infer_request(header + tensor.tobytes(), str(len(header)), 100)
    assert request.id == "r1" and request.binary_output
    np.testing.assert_array_equal(request.inputs["x"], tensor)
    assert request.inputs["y"].tolist() == [7]
    assert request.outputs[0].parameters == {"classification": 2} and request.outputs[0].binary is None
    body, length = infer_response(request, "m", "1", [("out", tensor)])
    document = json.loads(body[:length])
    assert document["outputs"][0]["parameters"]["binary_data_size"] == tensor.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 3), tensor)


def test_binary_sizes_must_add_up():
    view = memoryview(b"abcdef")
    assert [bytes(b) if b is not None else None for b in take_blobs(view, [2, None, 4])] == [b"ab", None, b"cdef"]
    with pytest.raises(InvalidArgument, match="past the end"):
        take_blobs(view, [7])
    with pytest.raises(InvalidArgument, match="bytes after"):
        take_blobs(view, [2])
    with pytest.raises(InvalidArgument, match="body holds 2 bytes"):
        split_body(b"{}", "3")
    assert join_body(b"{}", []) == (b"{}", None)


def test_duplicate_inputs_are_refused():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}).encode()
    with pytest.raises(InvalidArgument, match="more than once"):
        parse_infer_request(body, None, 100)


def test_protobuf_json_keeps_64_bit_numbers_and_defaults():
    config = mc.ModelConfig(name="m", max_batch_size=0)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3, 224, 224])
    config.parameters["task"].string_value = "classification"
    document = message_to_json(config)
    assert document["max_batch_size"] == 0 and document["input"][0]["dims"] == [3, 224, 224]
    assert document["input"][0]["data_type"] == "TYPE_FP32"
    assert document["parameters"] == {"task": {"string_value": "classification"}}
    assert "dynamic_batching" not in document  # unset sub-messages are left out
    stats = message_to_json(pb.InferStatistics(success=pb.StatisticDuration(count=2**40, ns=5)))
    assert stats["success"] == {"count": 2**40, "ns": 5}
    parameter = message_to_json(pb.InferParameter(int64_param=3))
    assert parameter == {"int64_param": 3}  # a oneof writes only its set member


def test_every_service_error_has_one_http_status():
    assert http_status_of(BodyTooLarge("x")) == 413
    assert http_status_of(ResourceExhausted("x")) == 429
    assert http_status_of(NotFound("x")) == 404 and http_status_of(Unavailable("x")) == 503
    assert http_status_of(ValueError("x")) == 500
    for cls in ServiceError.__subclasses__():
        assert cls in HTTP_STATUS, f"{cls.__name__} has no HTTP status"
