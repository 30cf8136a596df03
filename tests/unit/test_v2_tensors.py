"""V2 tensor codec against the real tritonclient: the bytes it sends and the way it reads replies."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import serialize_byte_tensor

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InternalError, InvalidArgument
from service.servicers import v2_parameters as v2p
from service.servicers import v2_tensors as v2

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
BYTES_SAMPLE = np.array([[b"", b"a\x00b", "h\u00e9llo"], [b"\xff" * 300, b"x", "\u2603"]], dtype=object)


def sample(datatype: str, shape=(2, 3), seed: int = 0) -> np.ndarray:
    """A deterministic array of `datatype` spanning the type's extremes."""
    rng = np.random.default_rng(seed)
    dtype = v2.numpy_dtype(datatype)
    if datatype == "BYTES":
        if shape == (2, 3):
            return BYTES_SAMPLE
        array = np.empty(shape, dtype=object)
        array.ravel()[:] = [b"z" * i for i in range(array.size)]
        return array
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype) * 1000
    info = np.iinfo(dtype)
    array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if array.size >= 2:
        array.flat[0], array.flat[-1] = info.min, info.max
    return array


def utf8(array: np.ndarray) -> np.ndarray:
    """What a BYTES array looks like after the wire: str elements become their UTF-8 bytes."""
    if array.dtype != object:
        return array
    return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array)


def raised(call, *args) -> str:
    with pytest.raises(InvalidArgument) as error:
        call(*args)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return error.value.message


def input_tensor(name="x", datatype="FP32", shape=(2, 3), **contents):
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def triton_request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """The request tritonclient's InferenceServerClient.infer would send, parsed by our stubs."""
    inputs = []
    for name, array in arrays.items():
        infer_input = InferInput(name, list(array.shape), v2.v2_datatype(array.dtype))
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    request = _get_inference_request(
        model_name="m",
        inputs=inputs,
        model_version="",
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    return pb.ModelInferRequest.FromString(request.SerializeToString())


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
@pytest.mark.parametrize("shape", [(2, 3), (0, 4), ()])
def test_raw_round_trip_keeps_values_dtype_and_shape(datatype, shape):
    array = sample(datatype, shape)
    wire_type, raw = v2.encode_raw(array)
    decoded = v2.decode_raw(raw, wire_type, array.shape)
    assert wire_type == datatype
    assert decoded.dtype == v2.numpy_dtype(datatype)
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, utf8(array))


@pytest.mark.parametrize("datatype", sorted(TYPED_FIELD))
def test_typed_contents_decode_like_raw(datatype):
    array = sample(datatype)
    values = [v.encode() if isinstance(v, str) else v for v in array.ravel().tolist()]
    tensor = input_tensor(datatype=datatype, **{TYPED_FIELD[datatype]: values})
    typed = v2.input_to_numpy(tensor)
    raw = v2.input_to_numpy(tensor.__class__(name="x", datatype=datatype, shape=(2, 3)), v2.encode_raw(array)[1])
    assert typed.dtype == raw.dtype == v2.numpy_dtype(datatype)
    np.testing.assert_array_equal(typed, raw)


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_decodes_the_request_tritonclient_sends(datatype):
    array = sample(datatype)
    request = triton_request({"image": array, "scale": np.array([0.5], dtype=np.float32)})
    decoded = v2.request_inputs(request)
    assert list(decoded) == ["image", "scale"]
    np.testing.assert_array_equal(decoded["image"], utf8(array))
    assert decoded["image"].dtype == v2.numpy_dtype(datatype)
    np.testing.assert_array_equal(decoded["scale"], [0.5])


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_tritonclient_reads_our_outputs(datatype):
    array = sample(datatype, seed=1)
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    for name, output in {"out": array, "count": np.arange(3, dtype=np.int64)}.items():
        v2.append_output(response, name, output)
    result = InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    got = result.as_numpy("out")
    assert result.get_output("out").datatype == datatype
    assert list(result.get_output("out").shape) == [2, 3]
    np.testing.assert_array_equal(got, utf8(array))
    np.testing.assert_array_equal(result.as_numpy("count"), [0, 1, 2])


def test_bytes_framing_is_byte_identical_to_tritonclient():
    ours = v2.encode_raw(BYTES_SAMPLE)[1]
    assert ours == serialize_byte_tensor(BYTES_SAMPLE).item()
    assert ours[:4] == struct.pack("<I", 0) and ours[4:8] == struct.pack("<I", 3)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_round_trip_any_elements(elements):
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = v2.encode_raw(array)[1]
    assert raw == (serialize_byte_tensor(array).item() if elements else b"")
    assert v2.decode_raw(raw, "BYTES", [len(elements)]).tolist() == elements


def test_encoding_is_row_major_little_endian_whatever_the_layout():
    logical = np.arange(6, dtype=np.float32).reshape(2, 3)
    for variant in (logical.T.copy().T, logical.astype(">f4"), np.asfortranarray(logical)):
        assert v2.encode_raw(variant) == ("FP32", logical.astype("<f4").tobytes())


def test_nan_and_inf_pass_through():
    array = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    decoded = v2.decode_raw(v2.encode_raw(array)[1], "FP32", [4])
    np.testing.assert_array_equal(decoded, array)
    typed = v2.decode_typed(pb.InferTensorContents(fp32_contents=array.tolist()), "FP32", [4])
    np.testing.assert_array_equal(typed, array)


def test_response_outputs_reads_raw_and_typed():
    response = pb.ModelInferResponse()
    v2.append_output(response, "a", np.array([[1, 2]], dtype=np.int16))
    assert v2.response_outputs(response)["a"].tolist() == [[1, 2]]
    typed = pb.ModelInferResponse(
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="b", datatype="FP64", shape=[2], contents=pb.InferTensorContents(fp64_contents=[1, 2])
            )
        ]
    )
    assert v2.response_outputs(typed)["b"].tolist() == [1.0, 2.0]


def test_append_input_builds_what_request_inputs_reads():
    request = pb.ModelInferRequest(model_name="m")
    v2.append_input(request, "x", sample("FP32"))
    v2.append_input(request, "names", BYTES_SAMPLE)
    decoded = v2.request_inputs(request)
    np.testing.assert_array_equal(decoded["x"], sample("FP32"))
    assert decoded["names"][0, 2] == "h\u00e9llo".encode()


def test_datatype_mapping_both_ways():
    for datatype in NUMERIC:
        assert v2.v2_datatype(v2.numpy_dtype(datatype)) == datatype
    assert v2.v2_datatype(np.dtype("<U5")) == v2.v2_datatype(np.dtype("S3")) == "BYTES"
    with pytest.raises(InternalError, match="complex64 has no V2 datatype"):
        v2.v2_datatype(np.complex64, "output 'z'")


# ---------------------------------------------------------------- validation


def test_unknown_and_bf16_datatypes_are_refused():
    message = raised(v2.input_to_numpy, input_tensor(datatype="FLOAT32"))
    assert "input 'x'" in message and "unknown datatype 'FLOAT32'" in message and "FP32" in message
    message = raised(v2.input_to_numpy, input_tensor(datatype="BF16"))
    assert "input 'x'" in message and "BF16 is not supported" in message


def test_typed_element_count_must_match_shape():
    message = raised(v2.input_to_numpy, input_tensor(fp32_contents=[1, 2, 3, 4, 5]))
    assert message == "input 'x': fp32_contents holds 5 elements but FP32 [2, 3] needs 6"


def test_raw_byte_length_must_match_dtype_and_shape():
    tensor = pb.ModelInferRequest.InferInputTensor(name="img", datatype="FP32", shape=[2, 3])
    message = raised(v2.input_to_numpy, tensor, b"\x00" * 20)
    assert message == "input 'img': raw contents hold 20 bytes but FP32 [2, 3] needs 24 (6 x 4)"


def test_negative_dimensions_are_refused():
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[-1, 3])
    assert "input 'x': shape [-1, 3] has a negative dimension" in raised(v2.input_to_numpy, tensor, b"")


def test_mixing_raw_and_typed_contents_is_refused():
    request = triton_request({"a": np.zeros(2, np.float32)})
    request.inputs.add(name="b", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\x00" * 4)
    message = raised(v2.request_inputs, request)
    assert "input 'b' has typed contents but the request also uses raw_input_contents" in message


def test_raw_entry_count_must_match_inputs():
    request = triton_request({"a": np.zeros(2, np.float32)})
    request.raw_input_contents.append(b"")
    assert "2 raw_input_contents entries for 1 inputs" in raised(v2.request_inputs, request)


def test_duplicate_input_names_are_refused():
    request = triton_request({"a": np.zeros(2, np.float32)})
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    assert "input 'a' appears more than once" in raised(v2.request_inputs, request)


def test_wrong_typed_field_for_datatype_is_refused():
    message = raised(v2.input_to_numpy, input_tensor(shape=[1], int_contents=[1]))
    assert message == "input 'x': datatype FP32 carries its elements in fp32_contents, but int_contents is set"


def test_fp16_has_no_typed_field():
    message = raised(v2.input_to_numpy, input_tensor(datatype="FP16", shape=[1], fp32_contents=[1]))
    assert "input 'x': FP16 has no typed contents field; send it in raw_input_contents" == message


@pytest.mark.parametrize(
    "datatype,field,value",
    [
        ("INT8", "int_contents", 128),
        ("INT16", "int_contents", -32769),
        ("UINT8", "uint_contents", 256),
        ("UINT16", "uint_contents", 70000),
    ],
)
def test_narrow_integers_out_of_range_are_refused_not_wrapped(datatype, field, value):
    message = raised(v2.input_to_numpy, input_tensor(datatype=datatype, shape=[1], **{field: [value]}))
    assert f"outside the {datatype} range" in message


def test_raw_bool_must_be_zero_or_one():
    tensor = pb.ModelInferRequest.InferInputTensor(name="m", datatype="BOOL", shape=[3])
    assert "input 'm': raw BOOL contents must be bytes 0 or 1" == raised(v2.input_to_numpy, tensor, b"\x00\x01\x02")


@pytest.mark.parametrize(
    "raw,fragment",
    [
        (struct.pack("<I", 1) + b"a" + b"\x02\x00", "end inside the 4-byte length prefix of element 1"),
        (struct.pack("<I", 9) + b"abc", "element 0 declares 9 bytes but only 3 remain"),
        (struct.pack("<I", 1) + b"a", "hold 1 elements but shape [2] needs 2"),
        (struct.pack("<I", 0) * 3, "hold more than the 2 elements shape [2] needs (4 bytes left over)"),
    ],
)
def test_malformed_bytes_framing_is_refused(raw, fragment):
    tensor = pb.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[2])
    message = raised(v2.input_to_numpy, tensor, raw)
    assert message.startswith("input 's': BYTES") and fragment in message


def test_mixing_raw_and_typed_outputs_is_an_internal_error():
    response = pb.ModelInferResponse()
    response.outputs.add(name="typed", datatype="FP32", shape=[0])
    with pytest.raises(InternalError, match="cannot be mixed"):
        v2.append_output(response, "raw", np.zeros(1, np.float32))


def test_non_bytes_objects_are_not_stringified():
    with pytest.raises(InternalError, match="output 'o': BYTES element 1 is a int"):
        v2.encode_raw(np.array([b"a", 3], dtype=object), "output 'o'")


# ---------------------------------------------------------------- parameters


def test_parameters_become_plain_values():
    request = pb.ModelInferRequest()
    request.parameters["flag"].bool_param = True
    request.parameters["n"].int64_param = -7
    request.parameters["name"].string_param = "cam"
    request.parameters["ratio"].double_param = 0.25
    request.parameters["priority"].uint64_param = 2**64 - 1
    assert v2p.parameters_to_python(request.parameters) == {
        "flag": True,
        "n": -7,
        "name": "cam",
        "priority": 2**64 - 1,
        "ratio": 0.25,
    }
    assert list(v2p.parameters_to_python(request.parameters)) == sorted(request.parameters)
    load = pb.RepositoryModelLoadRequest()
    load.parameters["config"].bytes_param = b"{}"
    assert v2p.parameters_to_python(load.parameters) == {"config": b"{}"}


def test_unset_parameter_is_refused():
    request = pb.ModelInferRequest()
    request.parameters["empty"].SetInParent()
    assert "parameter 'empty' has no value" == raised(v2p.parameters_to_python, request.parameters)


@pytest.mark.parametrize(
    "value,field",
    [
        (True, "bool_param"),
        (-3, "int64_param"),
        (2**63, "uint64_param"),
        (1.5, "double_param"),
        ("x", "string_param"),
        (np.float32(0.5), "double_param"),
        (np.int64(4), "int64_param"),
    ],
)
def test_parameter_from_python_round_trips(value, field):
    parameter = v2p.parameter_from_python(value)
    assert parameter.WhichOneof("parameter_choice") == field
    assert v2p.parameters_to_python({"k": parameter}) == {"k": value}


def test_parameter_from_python_refuses_what_does_not_fit():
    assert "does not fit in 64 bits" in raised(v2p.parameter_from_python, 2**64)
    assert "list is not bool, int, float or str" in raised(v2p.parameter_from_python, [1])
