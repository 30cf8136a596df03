"""Image dimensions read from the file header, before any pixel is decoded.

Why: a 100k x 100k PNG is a few kilobytes on the wire but tens of gigabytes once decoded. The
server refuses such images from their header alone, so a hostile or broken camera cannot make it
allocate. Formats: PNG, JPEG (SOF markers), BMP, WebP (VP8/VP8L/VP8X), GIF, TIFF (first IFD, which
is the page OpenCV decodes). `decode_image` refuses bytes whose size this module cannot read: a
288 KB TIFF of 8000 x 8000 zeros made the decoder allocate 370 MB before the limit was checked.
"""

from __future__ import annotations

import struct

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the format is not one we parse."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM":
        return _bmp_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(data)
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


_JPEG_MAX_STEPS = 10_000  # markers + fill bytes read before giving up; real files need < 300


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOF segment, read the way libjpeg reads markers.

    Bytes between segments are skipped up to the next 0xFF (libjpeg resynchronises the same way),
    with `bytes.find`, so megabytes of junk cost microseconds; the steps are capped, so a stream of
    fill bytes or length-less markers cannot keep a thread (and the GIL) busy for seconds.
    """
    pos, end = 2, len(data)
    for _ in range(_JPEG_MAX_STEPS):
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 4 > end:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte: libjpeg swallows any run of FF before a marker
            pos += 1
            continue
        if marker == 0x00:  # FF 00 is a stuffed zero, not a marker: libjpeg discards it and reads on
            pos += 2
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:  # libjpeg refuses such a segment; never guess where the next marker is
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
# Integer field types libtiff accepts for ImageWidth/ImageLength (TIFFReadDirEntryLong), with the
# struct format of their inline value: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG.
_TIFF_INTEGER = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD, read as libtiff reads them.

    libtiff takes the first of duplicated tags and any integer type (signed ones too), so this
    does the same; a first occurrence this reader cannot take (a count other than 1, a negative
    or non-integer value) makes the whole size unknown, and the image is refused (fail closed),
    rather than falling back to a later duplicate that libtiff would ignore.
    """
    if len(data) < 8:
        return None
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int | None] = {}
    for entry in range(offset + 2, min(offset + 2 + 12 * count, len(data) - 11), 12):
        tag, kind, values = struct.unpack(order + "HHI", data[entry : entry + 8])
        if tag not in (_TIFF_WIDTH, _TIFF_HEIGHT) or tag in found:
            continue
        fmt = _TIFF_INTEGER.get(kind)
        if fmt is None or values != 1:
            found[tag] = None
            continue
        (value,) = struct.unpack(order + fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)])
        found[tag] = value if value >= 0 else None
    width, height = found.get(_TIFF_WIDTH), found.get(_TIFF_HEIGHT)
    if width is None or height is None:
        return None
    return width, height
