"""Image sizes read from file headers (service/image_header.py), checked against real encoders.

The server refuses oversized images from their header before decoding, so the header reader must
agree with what OpenCV and Pillow write for every format, and must never crash or loop on
arbitrary bytes (it runs on untrusted input).
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import InvalidArgument
from service.image_header import image_size
from service.preprocess import decode_image
from service.config import PreprocessingConfig

SIZES = [(1, 1), (37, 23), (640, 480), (17, 300)]  # (width, height)


def pixels(width, height, channels=3):
    rng = np.random.default_rng(width * 1000 + height)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def pillow_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("width, height", SIZES)
@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".webp"])
def test_opencv_encoded_sizes(extension, width, height):
    data = cv2.imencode(extension, pixels(width, height))[1].tobytes()
    assert image_size(data) == (width, height)


@pytest.mark.parametrize("width, height", SIZES)
@pytest.mark.parametrize(
    "fmt, options, mode",
    [
        ("JPEG", {"progressive": True}, "RGB"),  # SOF2
        ("JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 64}, "L"),  # an APP1 segment before the frame
        ("PNG", {}, "RGBA"),
        ("PNG", {}, "I;16"),
        ("BMP", {}, "L"),
        ("GIF", {}, "P"),
        ("WEBP", {"lossless": True}, "RGB"),  # VP8L
        ("WEBP", {"quality": 80}, "RGB"),  # VP8
        ("WEBP", {"quality": 80}, "RGBA"),  # VP8X (alpha)
    ],
)
def test_pillow_encoded_sizes(fmt, options, mode, width, height):
    image = Image.fromarray(pixels(width, height)).convert(mode)
    assert image_size(pillow_bytes(image, fmt, **options)) == (width, height)


def test_bmp_core_header_and_top_down():
    core = bytearray(b"BM" + struct.pack("<IHHI", 26 + 12, 0, 0, 26) + struct.pack("<IHHHH", 12, 70, 9, 1, 24))
    assert image_size(bytes(core)) == (70, 9)
    data = bytearray(cv2.imencode(".bmp", pixels(12, 5))[1].tobytes())
    data[22:26] = struct.pack("<i", -5)  # negative height: rows stored top-down
    assert image_size(bytes(data)) == (12, 5)


def test_tiff_is_read_and_unknown_formats_give_none():
    tiff = cv2.imencode(".tiff", pixels(9, 4))[1].tobytes()
    assert image_size(tiff) == (9, 4)
    assert image_size(b"") is None
    assert image_size(b"plain text") is None


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".webp"])
def test_truncated_headers_give_none_not_errors(extension):
    data = cv2.imencode(extension, pixels(40, 30))[1].tobytes()
    for cut in range(0, 40):
        size = image_size(data[:cut])
        assert size is None or size == (40, 30)


def test_huge_dimensions_come_from_the_header_alone():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    assert image_size(png) == (100_000, 100_000)
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="100000x100000 = 10000000000 pixels, over the limit"):
        decode_image(png, PreprocessingConfig(resize="stretch", size=(8, 8)), max_pixels=40_000_000)
    assert time.perf_counter() - started < 0.1
    sof = b"\xff\xd8\xff\xc0" + struct.pack(">HBHH", 11, 8, 60_000, 50_000) + b"\x01\x01\x11\x00"
    assert image_size(sof) == (50_000, 60_000)
    gif = b"GIF89a" + struct.pack("<HH", 65535, 65535)
    assert image_size(gif) == (65535, 65535)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b""]),
    body=st.binary(max_size=80),
)
def test_arbitrary_bytes_never_raise(prefix, body):
    size = image_size(prefix + body)
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))
