"""Conversion between Open Inference Protocol (KServe V2) protobuf tensors and numpy arrays.

The V2 servicer is the only place protobuf meets numpy; everything below it sees plain arrays, so
this module is pure: protobuf in, numpy out (and back), no server state. It follows the wire
format tritonclient produces:

* datatype strings: BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES. BF16 is refused:
  numpy has no bfloat16 and ONNX Runtime models here do not take it.
* an input's elements come either from its typed `contents` (fp32_contents, int_contents, ...)
  or, for every input of the request at once, from `raw_input_contents[i]`: row-major,
  little-endian, no padding; a BYTES element is a 4-byte little-endian length and its bytes.
* outputs always go out raw (`raw_output_contents`), which is what tritonclient reads fastest.

Bad input raises `InvalidArgument` with a message naming the tensor. Values are not inspected:
NaN and Inf pass through (whether they are acceptable is the model's business, not the codec's).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from service.api.inference import grpc_service_pb2 as pb
from service.dtypes import NUMPY_OF_V2, V2_CONTENTS
from service.errors import InternalError, InvalidArgument, bounded

_DTYPES = NUMPY_OF_V2  # V2 datatype -> numpy dtype, little-endian as on the wire (service/dtypes.py)
V2_DATATYPES: tuple[str, ...] = tuple(_DTYPES)

# (numpy kind, itemsize) -> V2 datatype, for arrays of any byte order.
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items() if name != "BYTES"}

_TYPED_FIELD = V2_CONTENTS  # the InferTensorContents field of each datatype; FP16 has none (raw only)

_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str, what: str = "tensor") -> np.dtype:
    """The numpy dtype of a V2 datatype string; `what` names the tensor in the error."""
    dtype = _DTYPES.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == "BF16":
        raise InvalidArgument(f"{what}: datatype BF16 is not supported (numpy has no bfloat16); send FP32 or FP16")
    raise InvalidArgument(f"{what}: unknown datatype {datatype!r}; expected one of " + ", ".join(V2_DATATYPES))


def v2_datatype(dtype: np.dtype | type | str, what: str = "tensor") -> str:
    """The V2 datatype string of a numpy dtype; object, bytes and str arrays are BYTES.

    Raises InternalError: an array the server produced with an unrepresentable dtype is a server
    (model) problem, not the client's.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise InternalError(f"{what}: numpy dtype {dtype} has no V2 datatype")
    return name


_MAX_DIMS = 64  # numpy's limit on the number of axes
_MAX_EXTENT = 2**59  # numpy refuses shapes whose non-zero axes give more than 2**63 bytes, even when empty


def element_count(shape: Iterable[int], what: str = "tensor") -> int:
    """Number of elements of `shape`; negative dimensions are refused (-1 is not a request shape).

    Shapes numpy cannot represent are refused here too (more than 64 axes; an empty shape such
    as [0, 2**62]), so they are INVALID_ARGUMENT rather than a ValueError from `reshape`.
    """
    dims = list(shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(
            f"{what}: shape {dims} has a negative dimension; every dimension of a request tensor must be >= 0"
        )
    if len(dims) > _MAX_DIMS:
        raise InvalidArgument(f"{what}: shape has {len(dims)} dimensions; at most {_MAX_DIMS} are supported")
    if math.prod(d for d in dims if d) > _MAX_EXTENT:
        raise InvalidArgument(f"{what}: shape {dims} is too large to represent")
    return math.prod(dims)


def check_bytes_count(count: int, max_elements: int | None, what: str) -> None:
    """Refuse a BYTES tensor from its shape alone, before a single element is split or copied.

    Why: splitting is a Python loop per element; a shape of [16000000] with empty elements (61 MiB)
    held the event loop for 21 s before the image-count check ran.
    """
    if max_elements is not None and count > max_elements:
        raise InvalidArgument(
            f"{what}: BYTES shape holds {count} elements, over the limit of {max_elements} "
            "(one encoded image per element, --max-images-per-request)"
        )


def decode_raw(
    data: bytes, datatype: str, shape: Iterable[int], what: str = "tensor", max_bytes_elements: int | None = None
) -> np.ndarray:
    """Array of `shape` from raw V2 bytes.

    Fixed-size types return a read-only view of `data` (no copy), which is unaligned when the
    contents start at an odd offset (service.dtypes.aligned); BYTES returns an object array of `bytes`, of at
    most `max_bytes_elements` elements (checked before splitting).
    """
    dtype = numpy_dtype(datatype, what)
    dims = list(shape)
    count = element_count(dims, what)
    if datatype == "BYTES":
        check_bytes_count(count, max_bytes_elements, what)
        return _split_length_prefixed(data, count, dims, what).reshape(dims)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{what}: raw contents hold {len(data)} bytes but {datatype} "
            f"{dims} needs {expected} ({count} x {dtype.itemsize})"
        )
    if datatype == "BOOL" and np.frombuffer(data, dtype=np.uint8).max(initial=0) > 1:
        raise InvalidArgument(f"{what}: raw BOOL contents must be bytes 0 or 1")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _split_length_prefixed(data: bytes, count: int, dims: list[int], what: str) -> np.ndarray:
    """1-D object array of the `count` elements of length-prefixed BYTES data."""
    elements: list[bytes] = []
    offset, size = 0, len(data)
    while offset < size:
        index = len(elements)
        if index == count:
            raise InvalidArgument(
                f"{what}: BYTES raw contents hold more than the {count} "
                f"elements shape {dims} needs ({size - offset} bytes left over)"
            )
        if offset + _LENGTH.size > size:
            raise InvalidArgument(f"{what}: BYTES raw contents end inside the 4-byte length prefix of element {index}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > size:
            raise InvalidArgument(
                f"{what}: BYTES element {index} declares {length} bytes but only {size - offset} remain"
            )
        elements.append(bytes(data[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidArgument(
            f"{what}: BYTES raw contents hold {len(elements)} elements but shape {dims} needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def decode_typed(
    contents: pb.InferTensorContents,
    datatype: str,
    shape: Iterable[int],
    what: str = "tensor",
    max_bytes_elements: int | None = None,
) -> np.ndarray:
    """Array of `shape` from the typed contents field that matches `datatype`.

    Narrow integer types travel in 32-bit fields, so values outside the datatype's range are
    refused rather than wrapped.
    """
    dtype = numpy_dtype(datatype, what)
    dims = list(shape)
    count = element_count(dims, what)
    field = _TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"{what}: {datatype} has no typed contents field; send it in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidArgument(
            f"{what}: datatype {datatype} carries its elements in {field}, but {', '.join(others)} is set"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{what}: {field} holds {len(values)} elements but {datatype} {dims} needs {count}")
    if datatype == "BYTES":
        check_bytes_count(count, max_bytes_elements, what)
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    narrow = dtype.kind in "iu" and dtype.itemsize < 8
    array = np.array(values, dtype=np.int64 if narrow else dtype)
    if narrow and count:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidArgument(f"{what}: {field} has values outside the {datatype} range [{info.min}, {info.max}]")
    return array.astype(dtype, copy=False).reshape(dims)


def input_to_numpy(
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | memoryview | None = None,
    max_bytes_elements: int | None = None,
) -> np.ndarray:
    """One input as an array: from `raw` (its raw_input_contents entry) or its typed contents."""
    what = f"input '{bounded(tensor.name, 100)}'"
    if raw is None:
        return decode_typed(tensor.contents, tensor.datatype, tensor.shape, what, max_bytes_elements)
    if tensor.HasField("contents") and tensor.contents.ListFields():
        raise InvalidArgument(
            f"{what} has typed contents but the request also uses "
            "raw_input_contents; use one form for all inputs of a request"
        )
    return decode_raw(raw, tensor.datatype, tensor.shape, what, max_bytes_elements)


def request_inputs(
    request: pb.ModelInferRequest,
    max_bytes_elements: int | None = None,
    raw_contents: Sequence[bytes | memoryview] | None = None,
) -> dict[str, np.ndarray]:
    """Every input of a ModelInferRequest as {name: array}, in request order; BYTES inputs hold at
    most `max_bytes_elements` elements each (the server passes its images-per-request limit).
    `raw_contents` stands in for the message's raw_input_contents when the server kept them as
    views of the received bytes (service/servicers/infer_wire.py)."""
    raw = request.raw_input_contents if raw_contents is None else raw_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"request has {len(raw)} raw_input_contents entries for "
            f"{len(request.inputs)} inputs; send one per input, in input order"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidArgument(f"input '{tensor.name}' appears more than once in the request")
        arrays[tensor.name] = input_to_numpy(tensor, raw[index] if raw else None, max_bytes_elements)
    return arrays


def encode_raw(array: np.ndarray, what: str = "tensor") -> tuple[str, bytes]:
    """(V2 datatype, raw bytes) of an array: row-major little-endian, BYTES length-prefixed."""
    array = np.asarray(array)
    datatype = v2_datatype(array.dtype, what)
    if datatype == "BYTES":
        return datatype, _join_length_prefixed(array, what)
    wire = array.dtype.newbyteorder("<")
    return datatype, np.ascontiguousarray(array, dtype=wire).tobytes()


def _join_length_prefixed(array: np.ndarray, what: str) -> bytes:
    """Row-major elements of a bytes/str array, each as a 4-byte LE length then its bytes.

    str elements are UTF-8 encoded; anything else is refused instead of being str()-ed.
    """
    parts: list[bytes] = []
    for index, item in enumerate(array.ravel(order="C")):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            item = bytes(item)
        else:
            raise InternalError(f"{what}: BYTES element {index} is a {type(item).__name__}, not bytes or str")
        if len(item) > 0xFFFFFFFF:
            raise InternalError(f"{what}: BYTES element {index} exceeds 4 GiB")
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def append_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Add one output to `response`: its InferOutputTensor and its raw_output_contents entry."""
    if len(response.raw_output_contents) != len(response.outputs):
        raise InternalError(
            "response already holds outputs without raw contents; raw and typed outputs cannot be mixed"
        )
    array = np.asarray(array)
    datatype, raw = encode_raw(array, f"output '{name}'")
    response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    response.raw_output_contents.append(raw)


def append_input(request: pb.ModelInferRequest, name: str, array: np.ndarray) -> None:
    """Add one input to `request` in raw form (as tritonclient sends it); for clients and tests."""
    if request.inputs and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidArgument("request already holds inputs without raw contents; raw and typed inputs cannot be mixed")
    array = np.asarray(array)
    datatype, raw = encode_raw(array, f"input '{name}'")
    request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    request.raw_input_contents.append(raw)


def response_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a ModelInferResponse as {name: array} (raw or typed); for clients."""
    raw = response.raw_output_contents
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        what = f"output '{tensor.name}'"
        if raw:
            arrays[tensor.name] = decode_raw(raw[index], tensor.datatype, tensor.shape, what)
        else:
            arrays[tensor.name] = decode_typed(tensor.contents, tensor.datatype, tensor.shape, what)
    return arrays
