"""Fuzz Open Inference Protocol request parsing: arrays of the declared shape, or InvalidArgument.

`request_inputs` is the one place a V2 request's bytes become numpy arrays; whatever a client
sends (any datatype string, shape, typed contents, raw contents, or a serialized request with
its bytes mutated and parsed back), it must give arrays exactly as declared or raise
`InvalidArgument`, which the server answers as INVALID_ARGUMENT.
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument
from service.servicers.infer_wire import split_infer_request
from service.servicers.v2_parameters import parameters_to_python
from service.servicers.v2_tensors import numpy_dtype, request_inputs

from .conftest import examples
from .strategies import infer_requests, mutated_request_bytes, reparsed_requests


def check_parsed(request: pb.ModelInferRequest) -> None:
    try:
        arrays = request_inputs(request)
    except InvalidArgument:
        return
    assert list(arrays) == [tensor.name for tensor in request.inputs]
    for tensor in request.inputs:
        array = arrays[tensor.name]
        assert isinstance(array, np.ndarray)
        assert array.shape == tuple(tensor.shape)
        assert array.dtype == numpy_dtype(tensor.datatype)


def _request(datatype: str, shape: list[int], raw: bytes | None = None, **contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


# Regression requests for what the fuzzer found (docs/fuzzing.md): numpy's ValueError escaped
# for shapes whose element count is 0 but whose size overflows, and for more than 64 dimensions.
@given(request=infer_requests())
@example(request=_request("FP32", [0, 2**62], raw=b""))
@example(request=_request("BYTES", [2**62, 2**62, 0], raw=b""))
@example(request=_request("INT64", [0, 2**63 - 1]))
@example(request=_request("UINT8", [1] * 65, raw=b"\x00"))
@example(request=_request("BOOL", [0] * 70))
def test_request_inputs_gives_arrays_or_invalid_argument(request):
    check_parsed(request)


@given(request=reparsed_requests())
def test_mutated_serialized_requests(request):
    if request is not None:
        check_parsed(request)


@given(data=mutated_request_bytes())
def test_split_requests_parse_as_protobuf_does(data):
    """The server's ModelInfer reads requests with split_infer_request: on any bytes it must
    refuse what protobuf refuses (InvalidArgument) and otherwise give protobuf's request (the
    walk itself, which the server uses on messages over WHOLE_PARSE_MAX_BYTES)."""
    try:
        reference = pb.ModelInferRequest.FromString(data)
    except Exception:  # protobuf's DecodeError
        reference = None
    try:
        wire = split_infer_request(data, whole_parse_max_bytes=0)
    except InvalidArgument:
        assert reference is None
        return
    assert reference is not None
    assert [bytes(view) for view in wire.raw_input_contents] == list(reference.raw_input_contents)
    del reference.raw_input_contents[:]
    assert wire.message == reference


@settings(max_examples=examples(0.3))
@given(request=infer_requests())
def test_parameters_give_values_or_invalid_argument(request):
    for parameters in [
        request.parameters,
        *(t.parameters for t in request.inputs),
        *(o.parameters for o in request.outputs),
    ]:
        try:
            values = parameters_to_python(parameters)
        except InvalidArgument:
            continue
        assert sorted(values) == sorted(parameters)
