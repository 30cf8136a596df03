"""V2 request tensors that live in registered shared memory (Triton's parameters, Triton's rules).

An input or requested output names a region with three parameters, exactly as tritonclient's
`set_shared_memory` and perf_analyzer send them:

* `shared_memory_region` (string): the registered region's name;
* `shared_memory_byte_size` (int): the tensor's bytes in that region;
* `shared_memory_offset` (int, optional, default 0): where they start within the region.

Inputs become numpy views over the mapping (no copy; the batcher stacks them with any other
request's, or hands a lone request's view to ONNX Runtime directly). Their byte size is checked
against shape x datatype, and the window against the region's bounds, before a byte is read.
Inputs without these parameters take their `raw_input_contents` entries in order, as
tritonclient sends them. An output written to a region carries no bytes in the response: its
InferOutputTensor gives datatype and shape, and its raw_output_contents entry is empty, so that
raw_output_contents[i] still belongs to outputs[i] (Triton's layout; perf_analyzer's client
indexes the entries by output position and crashes when they are missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument
from service.servicers.v2_tensors import (
    append_output,
    decode_raw,
    element_count,
    encode_raw,
    input_to_numpy,
    numpy_dtype,
    request_inputs,
    v2_datatype,
)
from service.shared_memory import SharedMemoryRegistry, SystemRegion

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lives: a region and a window of it."""

    region: SystemRegion
    offset: int
    byte_size: int


def _int_parameter(parameters: Mapping[str, pb.InferParameter], key: str, what: str, default: int | None) -> int:
    if key not in parameters:
        if default is None:
            raise InvalidArgument(f"{what}: {REGION} is given without {key}")
        return default
    parameter = parameters[key]
    choice = parameter.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"{what}: {key} must be an integer parameter, got {choice}")
    value = getattr(parameter, choice)
    if value < 0:
        raise InvalidArgument(f"{what}: {key} must be >= 0, got {value}")
    return value


def tensor_slot(
    parameters: Mapping[str, pb.InferParameter], regions: SharedMemoryRegistry, what: str
) -> TensorSlot | None:
    """The tensor's shared-memory window, bounds-checked, or None when it names no region."""
    if REGION not in parameters:
        if BYTE_SIZE in parameters or OFFSET in parameters:
            raise InvalidArgument(f"{what}: {BYTE_SIZE}/{OFFSET} are given without {REGION}")
        return None
    name_parameter = parameters[REGION]
    if name_parameter.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"{what}: {REGION} must be a string parameter")
    region = regions.get(name_parameter.string_param, what)
    byte_size = _int_parameter(parameters, BYTE_SIZE, what, None)
    offset = _int_parameter(parameters, OFFSET, what, 0)
    if offset + byte_size > region.status.byte_size:
        raise InvalidArgument(
            f"{what}: {OFFSET} {offset} + {BYTE_SIZE} {byte_size} is past the end of "
            f"region '{region.status.name}' ({region.status.byte_size} bytes)"
        )
    return TensorSlot(region, offset, byte_size)


def read_input(
    tensor: pb.ModelInferRequest.InferInputTensor, slot: TensorSlot, max_bytes_elements: int | None = None
) -> np.ndarray:
    """The input as a read-only view of its window; the byte size is checked before reading (a BYTES
    input's element count against `max_bytes_elements` too, as on the plain path)."""
    what = f"input '{tensor.name}'"
    if tensor.HasField("contents") and tensor.contents.ListFields():
        raise InvalidArgument(f"{what} names shared-memory region '{slot.region.status.name}' and also has contents")
    dtype = numpy_dtype(tensor.datatype, what)
    if tensor.datatype != "BYTES":  # BYTES elements carry their own lengths; decode_raw bounds them
        expected = element_count(tensor.shape, what) * dtype.itemsize
        if slot.byte_size != expected:
            raise InvalidArgument(
                f"{what}: {BYTE_SIZE} is {slot.byte_size} but {tensor.datatype} "
                f"{list(tensor.shape)} needs {expected} bytes"
            )
    return decode_raw(
        slot.region.read(slot.offset, slot.byte_size, what), tensor.datatype, tensor.shape, what, max_bytes_elements
    )


class SharedMemoryBinding:
    """One request's tensors: its inputs as arrays and where its shared-memory outputs go."""

    def __init__(
        self,
        request: pb.ModelInferRequest,
        regions: SharedMemoryRegistry,
        max_bytes_elements: int | None = None,
        raw_contents: Sequence[bytes | memoryview] | None = None,
    ):
        """`max_bytes_elements` bounds each BYTES input's element count; `raw_contents` stands in
        for the message's raw_input_contents (both as in v2_tensors.request_inputs)."""
        self.outputs: dict[str, TensorSlot] = {}
        self.used = False
        raw = request.raw_input_contents if raw_contents is None else raw_contents
        if not regions:  # nothing registered: only the plain path is possible (or a precise refusal)
            self._refuse_named_regions(request, regions)
            self.inputs = request_inputs(request, max_bytes_elements, raw)
            return
        slots = [tensor_slot(t.parameters, regions, f"input '{t.name}'") for t in request.inputs]
        self.inputs = (
            request_inputs(request, max_bytes_elements, raw)
            if not any(slots)
            else self._mixed_inputs(request, raw, slots, max_bytes_elements)
        )
        for output in request.outputs:
            slot = tensor_slot(output.parameters, regions, f"output '{output.name}'")
            if slot is not None:
                self.outputs[output.name] = slot
        self.used = any(slots) or bool(self.outputs)

    @staticmethod
    def _refuse_named_regions(request: pb.ModelInferRequest, regions: SharedMemoryRegistry) -> None:
        for tensor in request.inputs:
            if REGION in tensor.parameters or BYTE_SIZE in tensor.parameters:
                tensor_slot(tensor.parameters, regions, f"input '{tensor.name}'")
        for output in request.outputs:
            if REGION in output.parameters or BYTE_SIZE in output.parameters:
                tensor_slot(output.parameters, regions, f"output '{output.name}'")

    @staticmethod
    def _mixed_inputs(
        request: pb.ModelInferRequest,
        raw: Sequence[bytes | memoryview],
        slots: list[TensorSlot | None],
        max_bytes_elements: int | None,
    ) -> dict[str, np.ndarray]:
        """Shared-memory inputs read from their regions; the others take raw entries in order."""
        plain = sum(slot is None for slot in slots)
        if raw and len(raw) != plain:
            raise InvalidArgument(
                f"request has {len(raw)} raw_input_contents entries for {plain} inputs not in "
                "shared memory; send one per such input, in input order"
            )
        arrays: dict[str, np.ndarray] = {}
        next_raw = 0
        for tensor, slot in zip(request.inputs, slots):
            if tensor.name in arrays:
                raise InvalidArgument(f"input '{tensor.name}' appears more than once in the request")
            if slot is not None:
                arrays[tensor.name] = read_input(tensor, slot, max_bytes_elements)
            else:
                arrays[tensor.name] = input_to_numpy(tensor, raw[next_raw] if raw else None, max_bytes_elements)
                next_raw += 1 if raw else 0
        return arrays

    def append_output(self, response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
        """Write the output to its region, or add it as raw contents (v2_tensors.append_output)."""
        slot = self.outputs.get(name)
        if slot is None:
            append_output(response, name, array)
            return
        what = f"output '{name}'"
        array = np.asarray(array)
        datatype, data = _wire_form(array, what)
        size = data.nbytes if isinstance(data, np.ndarray) else len(data)
        if size > slot.byte_size:
            raise InvalidArgument(
                f"{what}: {datatype} {list(array.shape)} needs {size} bytes but {BYTE_SIZE} "
                f"for region '{slot.region.status.name}' is {slot.byte_size}"
            )
        slot.region.write(slot.offset, data, what)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(b"")


def _wire_form(array: np.ndarray, what: str) -> tuple[str, np.ndarray | bytes]:
    """(V2 datatype, data to write): fixed-size types as a little-endian array (no extra copy when
    it already is one), BYTES as length-prefixed bytes."""
    datatype = v2_datatype(array.dtype, what)
    if datatype == "BYTES":
        return encode_raw(array, what)
    return datatype, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
