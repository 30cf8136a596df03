"""Overlays that apps display directly (detection boxes drawn on the original image), and the one
image encoder every overlay and label map goes through."""

from __future__ import annotations

import cv2
import numpy as np

_ENCODINGS = {"jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3])}
OVERLAY_FORMATS = tuple(_ENCODINGS)  # what a request may ask an overlay to be encoded as

_PALETTE = np.array(
    [
        (56, 56, 255),
        (151, 157, 255),
        (31, 112, 255),
        (29, 178, 255),
        (49, 210, 207),
        (10, 249, 72),
        (23, 204, 146),
        (134, 219, 61),
        (52, 147, 26),
        (187, 212, 0),
        (168, 153, 44),
        (255, 194, 0),
    ],
    dtype=np.uint8,
)


def class_color(index: int) -> tuple[int, int, int]:
    """A stable BGR colour per class index."""
    return tuple(int(c) for c in _PALETTE[index % len(_PALETTE)])


def encode_image(image: np.ndarray, fmt: str = "jpeg") -> bytes:
    """uint8 BGR [H, W, 3] or gray [H, W] (PNG: also uint16 [H, W]) -> JPEG (quality 90) or PNG bytes."""
    if fmt not in _ENCODINGS:
        raise ValueError(f"image format must be one of {OVERLAY_FORMATS}, got {fmt!r}")
    extension, params = _ENCODINGS[fmt]
    ok, buffer = cv2.imencode(extension, np.ascontiguousarray(image), params)
    if not ok:
        raise ValueError(f"could not encode a {image.dtype} {list(image.shape)} image as {fmt}")
    return buffer.tobytes()


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, labels: list[str], classes: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """A copy of `image` (BGR or gray) with each box [K, 4] (x1, y1, x2, y2 pixels) and 'label score' drawn."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for box, label, cls, score in zip(boxes, labels, classes, scores):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = class_color(int(cls))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"{label} {score:.2f}"
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(0, y1 - height - baseline)
        cv2.rectangle(canvas, (x1, top), (x1 + width, top + height + baseline), color, -1)
        cv2.putText(canvas, text, (x1, top + height), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
