"""Segmentation post-processing as pure numpy/OpenCV functions: logits -> label map, counts, PNGs.

The label map is the argmax of the class logits *after* they are resized bilinearly to the
original image, not a nearest-neighbour resize of a model-resolution label map: interpolating the
scores first gives smooth, sub-pixel class boundaries instead of blocky ones.

Coordinates: logits [C, h, w] cover the model input [H_in, W_in] (cell j's centre at
(j + 0.5) · H_in / h, the bilinear align_corners=False convention); `ResizeInfo` maps original
pixels onto the model input (model = original · scale + offset). Padding the preprocessor added
(letterbox borders, native-size padding up to the stride) is cut off with
`ResizeInfo.content_window()`: samples are clamped to the content, so padded cells never leak into
the answer. With `resize: native`, `native_scale: 1` (scale 1, offset 0) and full-resolution
logits the resize is the identity and the label map is exactly the argmax of the unpadded logits.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from service.postprocess.draw import encode_image
from service.postprocess.resample import resample_rows, sample_axis
from service.preprocess import ResizeInfo

# Bound on the float32 elements of one strip of resized logits (C x rows x W): ~8 MB, so several
# large masks made at once (concurrent Segment calls) stay small; larger strips were not faster.
STRIP_ELEMENTS = 2_000_000
# Distinct colours for the first classes (class 0, background, is never painted).
_BASE_COLOURS = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
)


def content_cells(info: ResizeInfo, map_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), end-exclusive, of the map cells [h, w] that cover image content."""
    top, left, bottom, right = info.content_window()
    ry, rx = map_hw[0] / info.input_hw[0], map_hw[1] / info.input_hw[1]
    cell_top, cell_left = min(int(np.floor(top * ry)), map_hw[0] - 1), min(int(np.floor(left * rx)), map_hw[1] - 1)
    cell_bottom = min(map_hw[0], max(cell_top + 1, int(np.ceil(bottom * ry))))
    cell_right = min(map_hw[1], max(cell_left + 1, int(np.ceil(right * rx))))
    return cell_top, cell_left, cell_bottom, cell_right


def label_map_from_logits(logits: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """logits [C, h, w] over the model input -> class indices [H, W] at the original image size
    (uint8, or uint16 above 256 classes): bilinear resize of the logits, then argmax over C.

    Works in strips of output rows so a large image never needs all C full-size planes at once.
    """
    classes, map_h, map_w = logits.shape
    (height, width), (sy, sx), (oy, ox) = info.original_hw, info.scale_yx, info.offset_yx
    top, left, bottom, right = content_cells(info, (map_h, map_w))
    logits = logits.astype(np.float32, copy=False)
    rows = sample_axis(height, sy, oy, info.input_hw[0], map_h, top, bottom)
    columns = sample_axis(width, sx, ox, info.input_hw[1], map_w, left, right)
    labels = np.empty((height, width), dtype=np.uint8 if classes <= 256 else np.uint16)
    step = max(1, STRIP_ELEMENTS // max(1, classes * width))
    for start in range(0, height, step):
        strip = slice(start, min(height, start + step))
        labels[strip] = np.argmax(resample_rows(logits, rows[strip], columns), axis=0)
    return labels


def probability_maps(logits: np.ndarray, info: ResizeInfo, apply_softmax: bool = True) -> np.ndarray:
    """logits [C, h, w] -> softmax over C, float32 [C, h', w'] at model resolution, padding cut off
    (`apply_softmax=False` for a model whose output already is probabilities: only the crop)."""
    top, left, bottom, right = content_cells(info, logits.shape[1:])
    content = logits[:, top:bottom, left:right].astype(np.float32)
    if not apply_softmax:
        return np.ascontiguousarray(content)
    exp = np.exp(content - content.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)


def one_channel_planes(scores: np.ndarray, threshold: float, sigmoid: bool) -> tuple[np.ndarray, np.ndarray]:
    """A one-channel map [1, h, w] -> (decision [2, h, w], probabilities [2, h, w]).

    The foreground probability p is sigmoid(scores) or the scores as they are. `decision` stacks a
    constant plane `threshold` before p: a bilinear resize keeps the constant, so its argmax is 1
    exactly where the resized p exceeds the threshold, and `label_map_from_logits` thresholds at
    the original resolution like it arg-maxes many classes. `probabilities` is (1 - p, p).
    """
    p = scores[0].astype(np.float32)
    if sigmoid:
        p = 1.0 / (1.0 + np.exp(-p))
    decision = np.stack([np.full_like(p, np.float32(threshold)), p])
    return decision, np.stack([1.0 - p, p])


def class_pixel_counts(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """label_map [H, W] -> pixels per class, int64 [num_classes].

    Counted in strips of rows: np.bincount casts its input to int64, 8 bytes a pixel (320 MB for a
    40-megapixel mask), so one call over the whole map would cost more than the mask itself.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    step = max(1, STRIP_ELEMENTS // max(1, label_map.shape[1]))
    for start in range(0, label_map.shape[0], step):
        counts += np.bincount(label_map[start : start + step].ravel(), minlength=num_classes)[:num_classes]
    return counts


def encode_label_map(label_map: np.ndarray) -> bytes:
    """Single-channel PNG whose pixel values are the class indices (8- or 16-bit as the array is)."""
    return encode_image(label_map, "png")


def palette(num_classes: int) -> np.ndarray:
    """RGB colours uint8 [num_classes, 3]: a fixed list, then evenly spread hues (golden ratio)."""
    colours = list(_BASE_COLOURS[:num_classes])
    for index in range(len(colours), num_classes):
        hue = (index * 0.618033988749895) % 1.0
        colours.append(tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95)))
    return np.asarray(colours, dtype=np.uint8).reshape(num_classes, 3)


def overlay_png(original: np.ndarray, label_map: np.ndarray, num_classes: int, alpha: float = 0.5) -> bytes:
    """original uint8 BGR [H, W, 3] (or gray [H, W]) with every non-background class blended in its
    palette colour -> RGB PNG bytes of the same size."""
    colours = palette(max(num_classes, int(label_map.max()) + 1))[:, ::-1].astype(np.float32)  # RGB -> BGR
    height, width = label_map.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, STRIP_ELEMENTS // max(1, 3 * width))  # float32 work in strips, never 12 bytes a pixel whole
    for start in range(0, height, step):
        rows = slice(start, min(height, start + step))
        part = original[rows]
        part = cv2.cvtColor(part, cv2.COLOR_GRAY2BGR) if part.ndim == 2 else part[:, :, :3]
        labels = label_map[rows]
        painted = labels > 0
        blended = part.astype(np.float32)
        blended[painted] = blended[painted] * (1.0 - alpha) + colours[labels[painted]] * alpha
        out[rows] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return encode_image(out, "png")
