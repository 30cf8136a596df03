"""Fuzz decode + preprocess: any bytes, mutated image files, odd arrays, every preprocessing policy.

Property: the result is a finite float32 tensor of exactly the configured shape, or a
`ServiceError` (which the server turns into a gRPC status); never another exception. And the
pixel limit is enforced from the header, before OpenCV allocates the decoded image.
"""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.config import PreprocessingConfig
from service.errors import InvalidArgument, ServiceError
from service.image_header import image_size
from service.preprocess import decode_image, preprocess_encoded, preprocess_image

from .conftest import examples
from .strategies import encoded_images, expected_input_hw, odd_arrays, preprocessing_specs, valid_images

MAX_PIXELS = st.sampled_from([64, 1_000, 4_096, 40_000_000])
GRAY_8 = PreprocessingConfig(color_order="gray", size=(8, 8))
RGB_8 = PreprocessingConfig(size=(8, 8))

# Regression inputs for what the fuzzers found (docs/fuzzing.md lists them).
TIFF_22x3 = cv2.imencode(".tif", np.zeros((3, 22), np.uint8))[1].tobytes()  # size was only checked after decoding
_JPEG = cv2.imencode(".jpg", np.zeros((3, 22), np.uint8))[1].tobytes()
JPEG_JUNK = _JPEG[:20] + b"\x00" * 64 + _JPEG[20:]  # junk after APP0: libjpeg skips it, the header parser gave up
JPEG_FILL = b"\xff\xd8" + b"\xff" * 200_000  # fill bytes: seconds of Python per megabyte before the fix


def _pil_tiff(byte_order: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buffer, format="TIFF", tiffinfo={}, byteorder=byte_order)
    return buffer.getvalue()


def check_tensor(tensor: np.ndarray, info, spec: PreprocessingConfig, original_hw: tuple[int, int]) -> None:
    assert tensor.dtype == np.float32
    assert tensor.shape == (spec.channels, *expected_input_hw(spec, original_hw))
    assert np.isfinite(tensor).all()
    assert info.original_hw == original_hw
    assert info.input_hw == tensor.shape[1:]
    assert all(np.isfinite(v) and v > 0 for v in info.scale_yx)


def well_formed(image: np.ndarray) -> bool:
    return (
        image.dtype == np.uint8
        and image.ndim in (2, 3)
        and min(image.shape[:2]) >= 1
        and (image.ndim == 2 or image.shape[2] in (3, 4))
    )


@given(data=st.binary(max_size=256))
@example(data=b"\xff\xd8\xff\xc0\x00")  # SOF marker cut off inside its length
@example(data=b"RIFF\x00\x00\x00\x00WEBPVP8X")
@example(data=b"II*\x00")  # TIFF magic without an IFD offset
@example(data=b"MM\x00*\x00\x00\x00\x08\x00\x01")  # IFD that ends inside its first entry
def test_image_size_never_raises(data):
    size = image_size(data)
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))


@settings(max_examples=examples(1.0))
@given(data=encoded_images())
def test_image_size_never_raises_on_mutated_files(data):
    size = image_size(data)
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))


@given(data=valid_images())
@example(data=_pil_tiff("<"))
@example(data=_pil_tiff(">"))
@example(data=JPEG_JUNK)
def test_header_size_is_the_decoded_size(data):
    """The header parser reads what OpenCV decodes, so the limit is applied to the real size."""
    size = image_size(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert size == (decoded.shape[1], decoded.shape[0])


def test_junk_is_skipped_in_milliseconds():
    started = time.perf_counter()
    assert image_size(JPEG_FILL) is None
    assert image_size(b"\xff\xd8" + b"\xff\x01" * 100_000) is None  # length-less markers
    assert image_size(b"\xff\xd8" + b"\x00" * 1_000_000) is None
    assert time.perf_counter() - started < 0.5


@settings(max_examples=examples(1.0))
@given(data=encoded_images(), spec=st.sampled_from([GRAY_8, RGB_8]), max_pixels=MAX_PIXELS)
@example(data=TIFF_22x3, spec=GRAY_8, max_pixels=64)
@example(data=JPEG_JUNK, spec=RGB_8, max_pixels=64)
def test_decode_gives_an_image_or_a_service_error(data, spec, max_pixels):
    try:
        image = decode_image(data, spec, max_pixels)
    except ServiceError as error:
        assert isinstance(error, InvalidArgument)
        if "over the limit" in error.message:  # refused from the header, never after decoding
            size = image_size(data)
            assert size is not None and size[0] * size[1] > max_pixels, error.message
        return
    assert image.dtype == np.uint8 and min(image.shape) >= 1
    assert image.ndim == 2 if spec.color_order == "gray" else (image.ndim == 3 and image.shape[2] == 3)
    assert image.shape[0] * image.shape[1] <= max_pixels


@settings(max_examples=examples(1.0))
@given(data=encoded_images(), spec=preprocessing_specs(), max_pixels=MAX_PIXELS)
def test_preprocess_encoded_gives_the_configured_tensor_or_a_service_error(data, spec, max_pixels):
    try:
        tensor, info = preprocess_encoded(data, spec, max_pixels)
    except ServiceError as error:
        assert isinstance(error, InvalidArgument)
        return
    check_tensor(tensor, info, spec, info.original_hw)


@settings(max_examples=examples(1.0))
@given(image=odd_arrays(), spec=preprocessing_specs(), source=st.sampled_from(["rgb", "bgr"]))
# Empty images: ZeroDivisionError (letterbox, center_crop), cv2.error (resize, cvtColor), a 0-size tensor (native).
@example(image=np.zeros((0, 5), np.uint8), spec=PreprocessingConfig(resize="letterbox", size=(8, 8)), source="rgb")
@example(image=np.zeros((5, 0, 3), np.uint8), spec=PreprocessingConfig(resize="center_crop", size=(4, 4)), source="bgr")
@example(image=np.zeros((0, 0), np.uint8), spec=RGB_8, source="rgb")
@example(image=np.zeros((0, 0), np.uint8), spec=PreprocessingConfig(color_order="gray", resize="native"), source="rgb")
def test_preprocess_image_on_any_array(image, spec, source):
    try:
        tensor, info = preprocess_image(image, spec, source)
    except ServiceError as error:
        assert isinstance(error, InvalidArgument)
        # A well-formed image is only refused by a centre crop larger than the resized image.
        assert not well_formed(image) or (spec.resize == "center_crop" and "center_crop" in error.message), (
            error.message
        )
        return
    assert well_formed(image)
    check_tensor(tensor, info, spec, image.shape[:2])
