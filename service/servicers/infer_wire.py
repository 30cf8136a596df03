"""A ModelInferRequest read from its wire bytes with its tensor bytes left where they arrived.

Why: protobuf's Python runtime copies a `bytes` field when it parses the message, and again on
every access (`request.raw_input_contents[0]` is a fresh copy each time). For a 600 kB ResNet
input that is two memcpys per request on the event loop; for a 60 MB tensor it is two more
60 MB allocations per request in flight, before any limit has looked at it. So the server's
ModelInfer handler receives the serialized message, `split_infer_request` walks its top-level
fields, hands `raw_input_contents` (field 7) on as memoryviews into the received bytes, and
parses only the rest (names, shapes, parameters: a few hundred bytes) with protobuf.

The walk is bounded: at most `MAX_TOP_LEVEL_FIELDS` fields are looked at; a message with more,
or with anything the walk does not take apart (a group, a truncated field), is parsed whole by
protobuf instead, which then decides whether it is valid. Either way the caller gets the same
request. A message of at most `WHOLE_PARSE_MAX_BYTES` is parsed whole from the start: there the
copies cost less than the walk (`python -m bench.experiments.parse_cost`, AMD EPYC Zen 4, Python
3.11, protobuf's upb parser: a 4 kB digits request 4.2 us whole vs 11.6 us walked, 66 kB 8.3 vs
14.2, 131 kB 10.7 vs 11.4, a 602 kB ResNet request 48.7 vs 12.7).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument

RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
MAX_TOP_LEVEL_FIELDS = 1024  # a request has a handful (names, inputs, outputs, parameters, contents)
WHOLE_PARSE_MAX_BYTES = 64 * 1024  # smaller messages: protobuf's C parser, copies and all, is faster
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


@dataclass(frozen=True)
class InferRequestWire:
    """A parsed ModelInferRequest whose `raw_input_contents` are views of the received bytes."""

    message: pb.ModelInferRequest  # every field except raw_input_contents
    raw_input_contents: list[memoryview]


def _varint(data: memoryview, offset: int) -> tuple[int, int] | None:
    """(value, next offset), or None when the varint is truncated or longer than 10 bytes."""
    value = shift = 0
    for index in range(offset, min(offset + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return None


def _contents_spans(data: memoryview) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """(spans of field 7's payloads, spans of every other field), or None to let protobuf parse it all."""
    contents: list[tuple[int, int]] = []
    others: list[tuple[int, int]] = []
    offset, size = 0, len(data)
    for _ in range(MAX_TOP_LEVEL_FIELDS):
        if offset == size:
            return contents, others
        start = offset
        tag = _varint(data, offset)
        if tag is None:
            return None
        key, offset = tag
        field, wire_type = key >> 3, key & 7
        if wire_type == _LENGTH_DELIMITED:
            length = _varint(data, offset)
            if length is None or length[1] + length[0] > size:
                return None
            offset = length[1] + length[0]
            if field == RAW_INPUT_CONTENTS:
                contents.append((length[1], offset))
                continue
        elif wire_type == _VARINT:
            value = _varint(data, offset)
            if value is None:
                return None
            offset = value[1]
        elif wire_type in (_FIXED64, _FIXED32):
            offset += 8 if wire_type == _FIXED64 else 4
            if offset > size:
                return None
        else:  # groups and invalid wire types: protobuf's own parser says what they are
            return None
        if others and others[-1][1] == start:
            others[-1] = (others[-1][0], offset)  # adjacent fields: one span, one join part
        else:
            others.append((start, offset))
    return None if offset != size else (contents, others)


def split_infer_request(data: bytes, whole_parse_max_bytes: int = WHOLE_PARSE_MAX_BYTES) -> InferRequestWire:
    """The request in `data` (its serialized form), tensor bytes as views (protobuf's copies for a
    message of at most `whole_parse_max_bytes`); INVALID_ARGUMENT when protobuf cannot parse it."""
    view = memoryview(data)
    spans = None if len(data) <= whole_parse_max_bytes else _contents_spans(view)
    try:
        if spans is None:
            message = pb.ModelInferRequest.FromString(data)
            contents = [memoryview(raw) for raw in message.raw_input_contents]  # protobuf's copies
            del message.raw_input_contents[:]  # one form either way: the contents beside the message
            return InferRequestWire(message, contents)
        contents, others = spans
        rest = view[others[0][0] : others[0][1]] if len(others) == 1 else b"".join(view[a:b] for a, b in others)
        message = pb.ModelInferRequest.FromString(bytes(rest) if others else b"")
    except DecodeError as exc:
        raise InvalidArgument(f"request is not a valid ModelInferRequest ({exc})") from None
    return InferRequestWire(message, [view[a:b] for a, b in contents])
