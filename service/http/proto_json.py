"""Protobuf messages as the JSON objects Triton's HTTP endpoints return.

Why not json_format.MessageToDict: it writes 64-bit integers as strings (proto3's JSON mapping),
while Triton's REST answers, which tritonclient.http and perf_analyzer parse, carry them as
numbers. Scalars are written even at their default value (perf_analyzer reads max_batch_size: 0);
unset sub-messages are left out.
"""

from __future__ import annotations

import base64

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def message_to_json(message: Message) -> dict:
    out: dict = {}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue  # a oneof writes only the member that is set
        value = getattr(message, field.name)
        if _is_map(field):
            out[field.name] = {
                key: _value(field.message_type.fields_by_name["value"], item) for key, item in value.items()
            }
        elif field.is_repeated:
            out[field.name] = [_value(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                out[field.name] = message_to_json(value)
        else:
            out[field.name] = _value(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE and field.is_repeated and field.message_type.GetOptions().map_entry
    )


def _value(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        described = field.enum_type.values_by_number.get(value)
        return described.name if described else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value
