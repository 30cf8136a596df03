"""Triton's binary tensor data extension: a JSON header followed by raw tensor bytes in one body.

Request: the `Inference-Header-Content-Length` header gives the JSON part's length; the bytes after
it are the inputs whose `parameters.binary_data_size` is set, back to back in input order, each in
the V2 raw layout (row-major little-endian; BYTES elements as a 4-byte length and their bytes).
Response: the same shape, for every output the client asked to receive as binary data.

Sizes are checked against the body before any tensor is built: the header length must fit in the
body and the declared sizes must add up to exactly the bytes that follow it.
"""

from __future__ import annotations

from typing import Sequence

from service.errors import InvalidArgument

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON part, binary part) of a request body; without the header the whole body is JSON."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}") from None
    if not 0 < length <= len(view):
        raise InvalidArgument(f"{HEADER_LENGTH} is {length} but the body holds {len(view)} bytes")
    return view[:length], view[length:]


def take_blobs(binary: memoryview, sizes: Sequence[int | None]) -> list[memoryview | None]:
    """Cut `binary` into consecutive blobs of `sizes` (None: that input has JSON data, no blob)."""
    blobs: list[memoryview | None] = []
    offset = 0
    for index, size in enumerate(sizes):
        if size is None:
            blobs.append(None)
            continue
        if offset + size > len(binary):
            raise InvalidArgument(
                f"inputs[{index}]: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} binary bytes left)"
            )
        blobs.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidArgument(
            f"the body holds {len(binary) - offset} binary bytes after the inputs' binary_data_size "
            "values; they must add up to the bytes after the JSON header"
        )
    return blobs


def join_body(header: bytes, blobs: Sequence[bytes]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when there is no binary part)."""
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)
