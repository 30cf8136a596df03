"""Decode and preprocess images: the single source of truth for image transforms.

Both the server and the training code in export/ call these functions, so a model sees exactly
the same pixels in training and in serving (no train/serve skew). Everything here is a pure
function of its inputs; OpenCV releases the GIL, so the server runs these in a thread pool.

Coordinates: `ResizeInfo` records how original-image pixels map onto the model input,
`model = original * scale + offset` per axis, so boxes and maps can be mapped back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.config import PreprocessingConfig
from service.errors import InvalidArgument
from service.image_header import image_size

DEFAULT_MAX_PIXELS = 40_000_000

_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}


@dataclass(frozen=True)
class ResizeInfo:
    """How one image was placed into the model input.

    original_hw: (H, W) of the decoded image. input_hw: (h, w) of the tensor fed to the model.
    scale_yx, offset_yx: model_coord = original_coord * scale + offset (per axis, in pixels).
    """

    original_hw: tuple[int, int]
    scale_yx: tuple[float, float]
    offset_yx: tuple[float, float]
    input_hw: tuple[int, int]

    def content_window(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the image content inside the model input, in input pixels."""
        sy, sx = self.scale_yx
        oy, ox = self.offset_yx
        height, width = self.original_hw
        top, left = max(0, int(round(oy))), max(0, int(round(ox)))
        bottom = min(self.input_hw[0], int(round(oy + height * sy)))
        right = min(self.input_hw[1], int(round(ox + width * sx)))
        return top, left, bottom, right


def decode_image(data: bytes, spec: PreprocessingConfig | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded bytes to uint8 BGR [H, W, 3] (or gray [H, W] for gray models).

    The pixel limit is checked from the header before decoding; bytes whose header
    `image_size` cannot read are refused, not decoded. EXIF orientation is applied
    (OpenCV's IMREAD_COLOR/IMREAD_GRAYSCALE do it). 16-bit images are reduced to 8 bits and an
    alpha channel is dropped, so every accepted format gives the same kind of array. A model that
    upscales its input (`native_scale` > 1) gets a proportionally lower limit, so the limit still
    bounds the tensor the model receives.
    """
    if spec is not None and spec.native_scale > 1.0:
        max_pixels = int(max_pixels / spec.native_scale**2)
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    size = image_size(data)
    if size is None:  # fail closed: never hand OpenCV a file whose size was not checked first
        raise InvalidArgument(
            f"image could not be decoded ({len(data)} bytes): not a JPEG/PNG/BMP/WebP/TIFF/GIF file, "
            "or its header is damaged"
        )
    _check_pixels(size[0], size[1], max_pixels)
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise InvalidArgument("image is a truncated JPEG (no end-of-image marker)")
    flag = cv2.IMREAD_GRAYSCALE if spec is not None and spec.color_order == "gray" else cv2.IMREAD_COLOR
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flag)
    except cv2.error as exc:
        raise InvalidArgument(f"image could not be decoded: {exc.msg.strip()}") from None
    if image is None or image.size == 0:
        raise InvalidArgument(
            f"image could not be decoded ({len(data)} bytes): not a JPEG/PNG/BMP/WebP/TIFF/GIF image, or truncated"
        )
    _check_pixels(image.shape[1], image.shape[0], max_pixels)
    return image


MAX_SIDE = 2**20  # OpenCV's own limit on one side (CV_IO_MAX_IMAGE_WIDTH/HEIGHT): refused here, by name


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"image header gives an empty size {width}x{height}")
    if max(width, height) > MAX_SIDE:
        raise InvalidArgument(f"image is {width}x{height}: a side over {MAX_SIDE} pixels, the decoder's limit")
    if width * height > max_pixels:
        raise InvalidArgument(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels"
        )


def convert_color(image: np.ndarray, source_order: str, target_order: str) -> np.ndarray:
    """Convert between gray [H, W], and rgb/bgr [H, W, 3] uint8 images."""
    if image.ndim == 2:
        if target_order == "gray":
            return image
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if target_order == "rgb" else cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidArgument(f"image must be HxW or HxWx3, got shape {tuple(image.shape)}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if target_order == "gray":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if source_order == "rgb" else cv2.COLOR_BGR2GRAY)
    if source_order != target_order:
        return np.ascontiguousarray(image[:, :, ::-1])
    return image


def resize_image(image: np.ndarray, spec: PreprocessingConfig) -> tuple[np.ndarray, ResizeInfo]:
    """Apply the resize policy (and border padding) of `spec`; return the image and its ResizeInfo."""
    height, width = image.shape[:2]
    interpolation = _INTERPOLATION[spec.interpolation]
    if spec.resize == "stretch":
        out_h, out_w = spec.size
        resized = cv2.resize(image, (out_w, out_h), interpolation=interpolation)
        scale, offset = (out_h / height, out_w / width), (0.0, 0.0)
    elif spec.resize == "letterbox":
        resized, scale, offset = _letterbox(image, spec.size, spec.pad_value, interpolation)
    elif spec.resize == "center_crop":
        resized, scale, offset = _center_crop(image, spec.size, spec.resize_shorter, interpolation)
    else:
        resized, scale, offset = _scale_and_pad(image, spec.native_scale, spec.stride, spec.pad_value, interpolation)
    if spec.padding:
        p = spec.padding
        resized = cv2.copyMakeBorder(resized, p, p, p, p, cv2.BORDER_CONSTANT, value=_fill(resized, spec.pad_value))
        offset = (offset[0] + p, offset[1] + p)
    info = ResizeInfo((height, width), scale, offset, (resized.shape[0], resized.shape[1]))
    return resized, info


def _fill(image: np.ndarray, value: float):
    return value if image.ndim == 2 else (value, value, value)


def _letterbox(image, size, pad_value, interpolation):
    """Scale to fit inside `size` keeping the aspect ratio, centre, pad the rest."""
    height, width = image.shape[:2]
    out_h, out_w = size
    ratio = min(out_h / height, out_w / width)
    new_h, new_w = max(1, int(round(height * ratio))), max(1, int(round(width * ratio)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    padded = cv2.copyMakeBorder(
        resized,
        top,
        out_h - new_h - top,
        left,
        out_w - new_w - left,
        cv2.BORDER_CONSTANT,
        value=_fill(image, pad_value),
    )
    return padded, (new_h / height, new_w / width), (float(top), float(left))


def _center_crop(image, size, resize_shorter, interpolation):
    """torchvision's Resize(shorter) + CenterCrop(size), with the same rounding."""
    height, width = image.shape[:2]
    out_h, out_w = size
    shorter = resize_shorter or min(out_h, out_w)
    if height <= width:
        new_h, new_w = shorter, int(shorter * width / height)
    else:
        new_h, new_w = int(shorter * height / width), shorter
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if new_h < out_h or new_w < out_w:
        raise InvalidArgument(f"center_crop: resized image {new_h}x{new_w} is smaller than the crop {out_h}x{out_w}")
    top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
    cropped = resized[top : top + out_h, left : left + out_w]
    return cropped, (new_h / height, new_w / width), (float(-top), float(-left))


def _scale_and_pad(image, native_scale, stride, pad_value, interpolation):
    """Native size (times `native_scale`, which lets a stride-8 segmenter resolve small objects),
    padded bottom/right up to a multiple of the network stride."""
    height, width = image.shape[:2]
    scale = (1.0, 1.0)
    if native_scale != 1.0:
        new_h, new_w = max(1, int(round(height * native_scale))), max(1, int(round(width * native_scale)))
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        scale = (new_h / height, new_w / width)
    pad_h, pad_w = (-image.shape[0]) % stride, (-image.shape[1]) % stride
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=_fill(image, pad_value))
    return image, scale, (0.0, 0.0)


def normalize(image: np.ndarray, spec: PreprocessingConfig, reverse_channels: bool = False) -> np.ndarray:
    """uint8 HxW[xC] -> float32 CHW: (pixel * scale - mean) / std, one fused pass.

    `reverse_channels`: the image is in the opposite channel order (BGR for an RGB model): the
    reorder is done by the CHW copy this makes anyway, instead of a copy of its own."""
    channels = spec.channels
    std = np.asarray(spec.std, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    gain = np.broadcast_to(spec.scale / std, (channels,)).astype(np.float32)
    bias = np.broadcast_to(-mean / std, (channels,)).astype(np.float32)
    if reverse_channels:
        gain, bias = gain[::-1], bias[::-1]
    pixels = image.reshape(image.shape[0], image.shape[1], channels).astype(np.float32)
    pixels *= gain
    pixels += bias
    chw = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[::-1] if reverse_channels else chw)


def preprocess_image(
    image: np.ndarray, spec: PreprocessingConfig, source_order: str = "bgr"
) -> tuple[np.ndarray, ResizeInfo]:
    """One decoded uint8 image (in `source_order`) -> the model's CHW float32 input + ResizeInfo."""
    if image.dtype != np.uint8:
        raise InvalidArgument(f"image must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:  # OpenCV asserts, and ratios divide by 0
        raise InvalidArgument(f"image must be HxW or HxWx3 with H, W >= 1, got shape {tuple(image.shape)}")
    if image.ndim == 3 and image.shape[2] == 3 and spec.color_order not in ("gray", source_order):
        # BGR <-> RGB only: resize first (per channel, so the same pixels) and reorder in normalize,
        # never a full-size copy of a large photo just to swap its channels.
        resized, info = resize_image(image, spec)
        return normalize(resized, spec, reverse_channels=True), info
    converted = convert_color(image, source_order, spec.color_order)
    resized, info = resize_image(converted, spec)
    return normalize(resized, spec), info


def preprocess_batch(
    images, spec: PreprocessingConfig, source_order: str = "bgr"
) -> tuple[np.ndarray, list[ResizeInfo]]:
    """Several images of one size policy -> NCHW float32 (all must reach the same input size)."""
    tensors, infos = zip(*(preprocess_image(image, spec, source_order) for image in images))
    return np.stack(tensors), list(infos)


def preprocess_encoded(
    data: bytes, spec: PreprocessingConfig, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ResizeInfo]:
    """Encoded bytes -> model input tensor: what the server runs for each image it receives."""
    return preprocess_image(decode_image(data, spec, max_pixels), spec, source_order="bgr")
