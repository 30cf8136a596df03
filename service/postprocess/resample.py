"""The one bilinear resampler: maps over the model input -> pixels of the original image.

Convention (torch's bilinear, align_corners=False): output pixel i (centre i + 0.5) lies at
model-input coordinate m = (i + 0.5) · scale + offset (`ResizeInfo`: model = original · scale +
offset) and at map coordinate f = m · map_size / input_size − 0.5. CAM upsampling and
segmentation logits both resample through `sample_axis` and `resample_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisTaps:
    """Bilinear taps along one axis for `n` output pixels: value = map[first] · (1 − weight) +
    map[second] · weight. inside: bool [n], whether the pixel lies inside the model input."""

    first: np.ndarray  # int64 [n]
    second: np.ndarray  # int64 [n]
    weight: np.ndarray  # float32 [n], in [0, 1]
    inside: np.ndarray  # bool [n]

    def __getitem__(self, part: slice) -> "AxisTaps":
        return AxisTaps(self.first[part], self.second[part], self.weight[part], self.inside[part])


def sample_axis(
    out_size: int, scale: float, offset: float, input_size: int, map_size: int, low: int = 0, high: int | None = None
) -> AxisTaps:
    """Taps of `out_size` output pixels on a map axis of `map_size` cells covering `input_size`
    model-input pixels; coordinates are clamped to the cells [low, high − 1] (default: all)."""
    high = map_size if high is None else high
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale + offset
    coords = np.clip(centres * (map_size / input_size) - 0.5, low, high - 1)
    first = np.floor(coords).astype(np.int64)
    second = np.minimum(first + 1, high - 1)
    inside = (centres >= 0.0) & (centres < input_size)
    return AxisTaps(first, second, (coords - first).astype(np.float32), inside)


def resample_rows(planes: np.ndarray, rows: AxisTaps, columns: AxisTaps) -> np.ndarray:
    """planes float32 [C, h, w] sampled at `rows` (r output rows) and `columns` (W) -> float32 [C, r, W]."""
    wy, wx = rows.weight, columns.weight
    blended = planes[:, rows.first, :] * (1.0 - wy)[None, :, None] + planes[:, rows.second, :] * wy[None, :, None]
    return blended[:, :, columns.first] * (1.0 - wx) + blended[:, :, columns.second] * wx
