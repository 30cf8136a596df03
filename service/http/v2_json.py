"""Open Inference Protocol JSON bodies <-> plain values (numpy arrays, small frozen dataclasses).

The request grammar is the KServe V2 REST one as Triton extends it:
    {"id": str, "parameters": {"binary_data_output": bool, "timeout": int (us), ...},
     "inputs": [{"name", "datatype", "shape", "parameters": {"binary_data_size": int}, "data": [...]}],
     "outputs": [{"name", "parameters": {"binary_data": bool, "classification": int}}]}
`data` is a flat or nested row-major list; BYTES elements are strings. An input with
`binary_data_size` takes its bytes from the binary part of the body (service/http/binary.py).

Parsing is bounded before it starts: the JSON part is refused when it could hold more than
`max_elements` values (every array element or object member after the first costs a comma, so the
comma count bounds them), and nesting too deep for the parser is refused, not crashed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from service.errors import InvalidArgument, ResourceExhausted
from service.http.binary import join_body, split_body, take_blobs
from service.servicers.v2_tensors import (
    check_bytes_count,
    decode_raw,
    element_count,
    encode_raw,
    numpy_dtype,
    v2_datatype,
)

_SCALARS = (bool, int, float, str)
SHM_REGION = "shared_memory_region"
# numpy kinds a JSON list may parse to, per target kind: no silent float -> int or number -> bool casts
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's binary_data_output decides
    parameters: dict = field(default_factory=dict)  # every other output parameter (classification, ...)


@dataclass(frozen=True)
class SharedInput:
    """An input whose bytes are in a registered shared-memory region (Triton's parameters)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict  # shared_memory_region, shared_memory_byte_size, shared_memory_offset


@dataclass(frozen=True)
class InferRequest:
    """One V2 infer request as plain values; inputs in the request's order."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]  # empty: every output of the model
    binary_output: bool
    timeout_s: float | None
    shared_inputs: tuple[SharedInput, ...] = ()

    @property
    def uses_shared_memory(self) -> bool:
        return bool(self.shared_inputs) or any(SHM_REGION in o.parameters for o in self.outputs)


def load_json(data: bytes | memoryview, max_elements: int, what: str = "request body"):
    """json.loads with the element bound checked first; malformed or too-deep JSON is INVALID_ARGUMENT."""
    raw = bytes(data)
    values = raw.count(b",") + 1
    if values > max_elements:
        raise ResourceExhausted(
            f"{what} holds up to {values} JSON values, over the limit of {max_elements} "
            "(--max-json-elements); send large tensors with the binary tensor data extension"
        )
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidArgument(f"{what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    return value


def _optional_bool(parameters: dict, key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"{what}.parameters.{key} must be true or false, got {value!r}"[:200])
    return value


def parse_infer_request(
    body: bytes, header_length: str | None, max_elements: int, max_bytes_elements: int | None = None
) -> InferRequest:
    """`max_elements` bounds the JSON values; `max_bytes_elements` each BYTES input's element count
    (the server passes its images-per-request limit, as for gRPC), checked from the shape."""
    header, binary = split_body(body, header_length)
    document = _object(load_json(header, max_elements), "request body")
    parameters = _object(document.get("parameters", {}), "parameters")
    inputs = document.get("inputs", [])
    if not isinstance(inputs, list):
        raise InvalidArgument("inputs must be a JSON list")
    specs = [_object(tensor, f"inputs[{index}]") for index, tensor in enumerate(inputs)]
    sizes = [_binary_size(spec, index) for index, spec in enumerate(specs)]
    blobs = take_blobs(binary, sizes)
    arrays: dict[str, np.ndarray] = {}
    shared: list[SharedInput] = []
    for index, (spec, blob) in enumerate(zip(specs, blobs)):
        name, array = _input_array(spec, blob, index, max_bytes_elements)
        if name in arrays or any(s.name == name for s in shared):
            raise InvalidArgument(f"input '{name}' appears more than once in the request")
        if isinstance(array, SharedInput):
            shared.append(array)
        else:
            arrays[name] = array
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument("outputs must be a JSON list")
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidArgument(f"parameters.timeout must be a positive integer of microseconds, got {timeout!r}"[:200])
    return InferRequest(
        id=_string(document.get("id", ""), "id"),
        inputs=arrays,
        outputs=tuple(_requested_output(output, index) for index, output in enumerate(outputs)),
        binary_output=bool(_optional_bool(parameters, "binary_data_output", "request")),
        timeout_s=timeout / 1e6 if timeout else None,
        shared_inputs=tuple(shared),
    )


def _binary_size(spec: dict, index: int) -> int | None:
    parameters = _object(spec.get("parameters", {}), f"inputs[{index}].parameters")
    size = parameters.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidArgument(
            f"inputs[{index}].parameters.binary_data_size must be an integer >= 0, got {size!r}"[:200]
        )
    return size


def _input_array(
    spec: dict, blob: memoryview | None, index: int, max_bytes_elements: int | None
) -> tuple[str, np.ndarray | SharedInput]:
    name = _string(spec.get("name"), f"inputs[{index}].name")
    what = f"input '{name}'"
    datatype = _string(spec.get("datatype"), f"{what}: datatype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{what}: shape must be a list of integers")
    parameters = spec.get("parameters", {})
    if SHM_REGION in parameters:  # the region's bounds and sizes are checked where it is read
        if blob is not None or "data" in spec:
            raise InvalidArgument(f"{what} names shared-memory region and also has data or binary_data_size")
        if not all(isinstance(v, _SCALARS) for v in parameters.values()):
            raise InvalidArgument(f"{what}: parameters must be strings, numbers or booleans")
        return name, SharedInput(name, datatype, shape, dict(parameters))
    if blob is not None:
        if "data" in spec:
            raise InvalidArgument(f"{what}: has both data and binary_data_size; send one")
        return name, decode_raw(blob, datatype, shape, what, max_bytes_elements)
    if "data" not in spec:
        raise InvalidArgument(f"{what}: has neither data nor binary_data_size")
    return name, json_tensor(spec["data"], datatype, shape, what, max_bytes_elements)


def json_tensor(data, datatype: str, shape: list[int], what: str, max_bytes_elements: int | None = None) -> np.ndarray:
    """A JSON `data` list (flat or nested, row-major) as an array of `datatype` and `shape`."""
    dtype = numpy_dtype(datatype, what)
    count = element_count(shape, what)
    if datatype == "BYTES":
        check_bytes_count(count, max_bytes_elements, what)
    if not isinstance(data, list):
        raise InvalidArgument(f"{what}: data must be a JSON list")
    try:
        parsed = np.array(data, dtype=object if datatype == "BYTES" else None)
    except ValueError:
        raise InvalidArgument(f"{what}: data is a ragged nested list") from None
    if parsed.size != count:
        raise InvalidArgument(f"{what}: data holds {parsed.size} elements but shape {shape} needs {count}")
    if datatype == "BYTES":
        flat = parsed.reshape(-1)
        if not all(isinstance(item, str) for item in flat):
            raise InvalidArgument(f"{what}: BYTES data must be strings (send raw bytes with binary_data_size)")
        encoded = np.empty(count, dtype=object)
        encoded[:] = [item.encode("utf-8") for item in flat]
        return encoded.reshape(shape)
    if count and parsed.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidArgument(
            f"{what}: {datatype} data must be {_KIND_NAMES[dtype.kind]}, got JSON {_json_kind(parsed)}"
        )
    if dtype.kind in "iu" and count:
        limits = np.iinfo(dtype)
        if parsed.min() < limits.min or parsed.max() > limits.max:
            raise InvalidArgument(f"{what}: a value is outside the range of {datatype} [{limits.min}, {limits.max}]")
    return parsed.astype(dtype).reshape(shape)


_KIND_NAMES = {"f": "numbers", "i": "integers", "u": "integers", "b": "true/false"}


def _json_kind(parsed: np.ndarray) -> str:
    return {"f": "numbers with fractions", "i": "integers", "u": "integers", "b": "true/false", "U": "strings"}.get(
        parsed.dtype.kind, "mixed values"
    )


def _requested_output(output, index: int) -> RequestedOutput:
    output = _object(output, f"outputs[{index}]")
    name = _string(output.get("name"), f"outputs[{index}].name")
    parameters = dict(_object(output.get("parameters", {}), f"outputs[{index}].parameters"))
    binary = _optional_bool(parameters, "binary_data", f"outputs[{index}]")
    parameters.pop("binary_data", None)
    if not all(isinstance(v, _SCALARS) for v in parameters.values()):
        raise InvalidArgument(f"output '{name}': parameters must be strings, numbers or booleans")
    return RequestedOutput(name, binary, parameters)


def infer_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray]],
    in_shared_memory: frozenset[str] = frozenset(),
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): outputs asked for as binary go after the JSON header;
    outputs already written to shared memory get datatype and shape only (Triton's answer: no data,
    no parameters; perf_analyzer reads `binary_data_size` from any output that has parameters)."""
    binary_of = {o.name: o.binary for o in request.outputs}
    described, blobs = [], []
    for name, array in outputs:
        binary = binary_of.get(name)
        what = f"output '{name}'"
        entry = {"name": name, "datatype": v2_datatype(array.dtype, what), "shape": list(array.shape)}
        as_binary = request.binary_output if binary is None else binary
        if name not in in_shared_memory and as_binary:
            _, raw = encode_raw(array, what)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif name not in in_shared_memory:
            entry["data"] = _json_data(array, what)
        described.append(entry)
    document = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request.id:
        document["id"] = request.id
    return join_body(json.dumps(document).encode(), blobs)


def _json_data(array: np.ndarray, what: str) -> list:
    flat = array.reshape(-1)
    if flat.dtype.kind not in "OSU":
        return flat.tolist()
    try:
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in flat]
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} holds bytes that are not UTF-8; ask for it with binary_data: true") from None
