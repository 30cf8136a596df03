"""Detect: images -> boxes (original-image pixels), labels and scores after NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from service.dataplane import DataPlane, ImageInput, RequestContext
from service.models import LoadedVersion


@dataclass(frozen=True)
class DetectOptions:
    """Per-request detection parameters; None means the model's configured default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    class_filter: tuple[int, ...] = ()
    class_agnostic: bool = False
    draw_overlay: bool = False


@dataclass(frozen=True)
class ObjectDetection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    label: str
    class_index: int
    score: float


@dataclass(frozen=True)
class DetectionResult:
    detections: tuple[ObjectDetection, ...]
    image_width: int
    image_height: int
    overlay_jpeg: bytes = b""


async def detect(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput], options: DetectOptions) -> list[DetectionResult]:
    raise NotImplementedError("being written")
