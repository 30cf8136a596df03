"""Hypothesis strategies shared by the fuzz tests: preprocessing configs, odd arrays, image files
(valid and mutated) and Open Inference Protocol requests (well-formed, malformed and re-parsed).

Mutations aim where decoders break: bit flips, truncation, inserted and deleted runs, headers
spliced from another format, and size fields rewritten to claim huge (or zero) dimensions.
"""

from __future__ import annotations

import math
import struct

import cv2
import numpy as np
from hypothesis import strategies as st

from service.api.inference import grpc_service_pb2 as pb
from service.config import PreprocessingConfig
from service.servicers.v2_tensors import V2_DATATYPES

FORMATS = (".png", ".jpg", ".bmp", ".webp", ".tif")
HUGE = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x3FFF_FFFF, 0x7FFF_FFFF, 0xFFFF_FFFF)

seeds = st.integers(0, 2**32 - 1)


# --- preprocessing configs -----------------------------------------------------------------------


@st.composite
def preprocessing_specs(draw) -> PreprocessingConfig:
    """Every policy of PreprocessingConfig, with sizes small enough to run hundreds of examples."""
    color = draw(st.sampled_from(["rgb", "bgr", "gray"]))
    channels = 1 if color == "gray" else 3
    resize = draw(st.sampled_from(["stretch", "letterbox", "center_crop", "native"]))
    size = None if resize == "native" else (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    shorter = draw(st.none() | st.integers(1, 64)) if resize == "center_crop" else None
    native_scale = draw(st.sampled_from([1.0, 0.5, 1.5, 2.0, 3.0])) if resize == "native" else 1.0
    count = draw(st.sampled_from([1, channels]))
    sign = st.sampled_from([1.0, -1.0])
    return PreprocessingConfig(
        color_order=color,
        resize=resize,
        size=size,
        resize_shorter=shorter,
        native_scale=native_scale,
        interpolation=draw(st.sampled_from(["linear", "area", "nearest", "cubic"])),
        padding=draw(st.integers(0, 4)),
        pad_value=draw(st.floats(0, 255)),
        stride=draw(st.integers(1, 16)),
        scale=draw(st.floats(1e-4, 10.0)),
        mean=tuple(draw(st.floats(-1e3, 1e3)) for _ in range(count)),
        std=tuple(draw(st.floats(1e-3, 1e3)) * draw(sign) for _ in range(count)),
    )


def expected_input_hw(spec: PreprocessingConfig, original_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the model input `spec` makes from an image of `original_hw`."""
    if spec.resize == "native":
        scaled = [max(1, int(round(n * spec.native_scale))) for n in original_hw]
        pad = lambda n: -(-n // spec.stride) * spec.stride  # noqa: E731 - round up to the stride
        return pad(scaled[0]) + 2 * spec.padding, pad(scaled[1]) + 2 * spec.padding
    return spec.input_hw


# --- arrays --------------------------------------------------------------------------------------


@st.composite
def odd_arrays(draw) -> np.ndarray:
    """Arrays a caller might pass as an image: any rank 0-4, empty axes, 1-5 channels, other dtypes,
    and non-contiguous views (flipped, strided, transposed)."""
    ndim = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 3, 4]))
    dims = [draw(st.integers(0, 40)) for _ in range(ndim)]
    if ndim == 3:
        dims[2] = draw(st.sampled_from([0, 1, 2, 3, 3, 4, 5]))
    dtype = draw(st.sampled_from([np.uint8] * 6 + [np.float32, np.int16, np.uint16, np.bool_, np.float64]))
    rng = np.random.default_rng(draw(seeds))
    array = rng.integers(0, 256, size=dims).astype(dtype)
    view = draw(st.sampled_from(["as is", "as is", "flipped", "strided", "transposed"]))
    if view == "flipped" and ndim >= 2:
        array = array[::-1, ::-1]
    elif view == "strided" and ndim >= 1:
        array = array[::2]
    elif view == "transposed" and ndim >= 2:
        array = np.swapaxes(array, 0, 1)
    return array


# --- encoded images ------------------------------------------------------------------------------


@st.composite
def valid_images(draw) -> bytes:
    """A real PNG/JPEG/BMP/WebP/TIFF file of a random small image (gray, colour or with alpha)."""
    ext = draw(st.sampled_from(FORMATS))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    channels = draw(st.sampled_from([1, 3, 4] if ext != ".jpg" else [1, 3]))
    rng = np.random.default_rng(draw(seeds))
    image = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    ok, encoded = cv2.imencode(ext, image)
    assert ok, ext
    return encoded.tobytes()


def size_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the width/height fields of a PNG/JPEG/BMP/WebP/TIFF header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return [(16, ">I"), (20, ">I")]
    if data[:2] == b"BM":
        return [(18, "<i"), (22, "<i")]
    if data[:4] == b"RIFF" and data[12:16] == b"VP8X":
        return [(24, "<I"), (27, "<I")]  # 24-bit fields: the 4th byte spills into the next field
    if data[:4] == b"RIFF" and data[12:16] == b"VP8 ":
        return [(26, "<H"), (28, "<H")]
    if data[:2] == b"\xff\xd8":
        index = next((i for i in range(2, len(data) - 1) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xC3), None)
        return [] if index is None else [(index + 5, ">H"), (index + 7, ">H")]
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size_fields(data)
    return []


def _tiff_size_fields(data: bytes) -> list[tuple[int, str]]:
    if len(data) < 8:
        return []
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return []
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    fields = []
    for index in range(count):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):
            fields.append((entry + 8, order + ("H" if kind == 3 else "I")))
    return fields


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """`data` after 1-4 random edits."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "splice", "huge", "huge", "field"])
        )
        position = draw(st.integers(0, max(0, len(buffer) - 1)))
        if kind == "flip" and buffer:
            buffer[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buffer[draw(st.integers(0, len(buffer))) :]
        elif kind == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buffer[position : position + draw(st.integers(1, 16))]
        elif kind == "splice":  # another format's header over this file's
            other = draw(valid_images())
            cut = draw(st.integers(1, 64))
            buffer[:cut] = other[:cut]
        elif kind == "huge":  # the header claims another width or height
            fields = size_fields(bytes(buffer))
            if fields:
                offset, fmt = draw(st.sampled_from(fields))
                value = draw(st.sampled_from(HUGE) | st.integers(0, 0xFFFF_FFFF))
                _pack_clamped(buffer, offset, fmt, value)
        elif kind == "field":  # a 16/32-bit value written anywhere in the first 64 bytes
            fmt = draw(st.sampled_from([">H", "<H", ">I", "<I"]))
            _pack_clamped(buffer, min(position, 63), fmt, draw(st.sampled_from(HUGE)))
    return bytes(buffer)


def _pack_clamped(buffer: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if offset + size > len(buffer):
        return
    bits = 8 * size
    value &= (1 << bits) - 1
    if fmt[-1] in "ih" and value >= 1 << (bits - 1):
        value -= 1 << bits
    struct.pack_into(fmt, buffer, offset, value)


@st.composite
def encoded_images(draw) -> bytes:
    """Bytes a client might send as an image: valid files, mutated files, or arbitrary bytes."""
    choice = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "mutated", "arbitrary"]))
    if choice == "arbitrary":
        return draw(st.binary(max_size=512))
    data = draw(valid_images())
    return data if choice == "valid" else draw(mutations(data))


# --- Open Inference Protocol requests ------------------------------------------------------------

DATATYPES = st.sampled_from(V2_DATATYPES + ("BF16", "", "FP8", "fp32", "STRING")) | st.text(max_size=6)
DIMS = st.sampled_from([0, 1, 2, 3, 4, -1, -2, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]) | st.integers(0, 6)
SHAPES = st.lists(DIMS, max_size=5) | st.lists(st.integers(0, 1), min_size=60, max_size=80)

_TYPED = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}


@st.composite
def typed_contents(draw) -> pb.InferTensorContents:
    fields = draw(st.lists(st.sampled_from(sorted(_TYPED)), max_size=2, unique=True))
    return pb.InferTensorContents(**{name: draw(st.lists(_TYPED[name], max_size=8)) for name in fields})


@st.composite
def raw_for(draw, datatype: str, shape: list[int]) -> bytes:
    """Raw bytes for a tensor: usually of the right length for the shape, sometimes not."""
    count = math.prod(shape) if all(d >= 0 for d in shape) else 1  # 0 whenever one axis is 0
    if datatype == "BYTES" and count <= 64 and draw(st.booleans()):
        elements = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)
    itemsize = {
        "BOOL": 1,
        "UINT8": 1,
        "INT8": 1,
        "UINT16": 2,
        "INT16": 2,
        "FP16": 2,
        "UINT32": 4,
        "INT32": 4,
        "FP32": 4,
        "UINT64": 8,
        "INT64": 8,
        "FP64": 8,
    }.get(datatype, 4)
    if count <= 256 and draw(st.booleans()):
        return draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    return draw(st.binary(max_size=64))


@st.composite
def infer_requests(draw, model_names=st.text(max_size=8)) -> pb.ModelInferRequest:  # noqa: B008 (immutable)
    """ModelInferRequests of any datatype/shape/contents/raw combination, mostly almost right."""
    request = pb.ModelInferRequest(
        model_name=draw(model_names),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1"])),
        id=draw(st.text(max_size=4)),
    )
    raw_mode = draw(st.sampled_from(["raw", "typed", "mixed"]))
    names = draw(st.lists(st.sampled_from(["input", "input", "x", "", "logits"]), min_size=0, max_size=3))
    raws = []
    for name in names:
        datatype, shape = draw(DATATYPES), draw(SHAPES)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw_mode != "raw" and draw(st.booleans()):
            tensor.contents.CopyFrom(draw(typed_contents()))
        raws.append(draw(raw_for(datatype, shape)))
        if draw(st.booleans()):
            tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 100))
    if raw_mode != "typed":
        request.raw_input_contents.extend(raws[: draw(st.integers(0, len(raws) + 1))] if raw_mode == "mixed" else raws)
    for name in draw(st.lists(st.sampled_from(["logits", "nope", ""]), max_size=2)):
        output = request.outputs.add(name=name)
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-3, 10))
    if draw(st.booleans()):
        parameter = request.parameters[draw(st.sampled_from(["priority", "timeout", "x"]))]
        choice = draw(
            st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param", None])
        )
        if choice is not None:
            setattr(
                parameter,
                choice,
                draw(
                    {
                        "bool_param": st.booleans(),
                        "int64_param": st.integers(-(2**63), 2**63 - 1),
                        "string_param": st.text(max_size=4),
                        "double_param": st.floats(),
                        "uint64_param": st.integers(0, 2**64 - 1),
                    }[choice]
                ),
            )
    return request


@st.composite
def mutated_request_bytes(draw) -> bytes:
    """A serialized request after byte mutations (or a few random bytes)."""
    data = draw(infer_requests()).SerializeToString()
    return draw(mutations(data)) if data else draw(st.binary(max_size=64))


@st.composite
def reparsed_requests(draw) -> pb.ModelInferRequest | None:
    """A serialized request after byte mutations, parsed back with FromString (None if it no longer parses)."""
    mutated = draw(mutated_request_bytes())
    try:
        return pb.ModelInferRequest.FromString(mutated)
    except Exception:  # protobuf's DecodeError; the property only concerns messages that parse
        return None
