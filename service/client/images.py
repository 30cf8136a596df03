"""What a caller may pass as an image, turned into the vision API's `Image` message.

Accepted: a file path (str or os.PathLike; the file's bytes are sent as they are, so the server
decodes them and applies EXIF orientation), encoded bytes (JPEG, PNG, BMP, WebP), a uint8 numpy
array HxW (gray) or HxWx3 in OpenCV's BGR order (sent as a lossless PNG so the server sees exactly
these pixels), or a float32 CHW numpy array that is already preprocessed for the model (sent as a
tensor; the server skips preprocessing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]


def image_to_proto(image: ImageLike) -> vpb.Image:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return vpb.Image(encoded=bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return vpb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, np.ndarray):
        return _array_to_proto(image)
    raise TypeError(f"an image must be a file path, encoded bytes or a numpy array, got {type(image).__name__}")


def _array_to_proto(array: np.ndarray) -> vpb.Image:
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        ok, png = cv2.imencode(".png", np.ascontiguousarray(array))
        if not ok:
            raise ValueError(f"could not PNG-encode an image array of shape {array.shape}")
        return vpb.Image(encoded=png.tobytes())
    if array.dtype == np.float32 and array.ndim == 3:
        data = np.ascontiguousarray(array).astype("<f4", copy=False).tobytes()
        return vpb.Image(tensor=vpb.Tensor(shape=list(array.shape), dtype="float32", data=data))
    raise ValueError(
        f"an image array must be uint8 HxW / HxWx3 (BGR) or a float32 CHW tensor, got {array.dtype} {array.shape}"
    )


def images_to_proto(images) -> list[vpb.Image]:
    """A list of images (a single image is accepted too and becomes a list of one)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)
    ):
        images = [images]
    converted = [image_to_proto(image) for image in images]
    if not converted:
        raise ValueError("no images given")
    return converted


@dataclass(frozen=True)
class Frame:
    """One camera frame for a stream; frame_id and capture time default to a counter and now."""

    image: ImageLike
    frame_id: int | None = None
    capture_timestamp_us: int | None = None
