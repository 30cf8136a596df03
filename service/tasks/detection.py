"""Detect: images -> boxes (original-image pixels), labels and scores after NMS."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from service.dataplane import DataPlane, ImageInput, RequestContext
from service.errors import InvalidArgument
from service.models import LoadedVersion
from service.postprocess.detect import DetectParams, detect as decode_detections
from service.postprocess.draw import draw_boxes, encode_image
from service.request_checks import check_class_filter_length


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
    overlay_jpeg: bytes = b""  # only for encoded images (a tensor input has no original picture)


def params_for(model: LoadedVersion, options: DetectOptions) -> DetectParams:
    """Request options over the model's configured defaults; validated before anything runs."""
    num_classes = len(model.labels)
    check_class_filter_length(len(options.class_filter), num_classes)
    if num_classes and any(c >= num_classes for c in options.class_filter):
        raise InvalidArgument(f"class_filter {list(options.class_filter)} names classes beyond the model's {num_classes}")
    return DetectParams.from_config(
        model.config.postprocessing.detection,
        score_threshold=options.score_threshold, iou_threshold=options.iou_threshold,
        max_detections=options.max_detections, class_agnostic=options.class_agnostic,
        classes=options.class_filter or None,
    )


async def detect(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput], options: DetectOptions) -> list[DetectionResult]:
    params = params_for(model, options)
    prepared = await dp.prepare(ctx, model, images, keep_original=options.draw_overlay)
    outputs = await dp.run_images(ctx, model, prepared)
    started = time.perf_counter()
    answer = model.config.answer_output
    results = []
    for item, output in zip(prepared, outputs):
        found = decode_detections(output[answer], model.config.postprocessing.detection, item.info, params)
        labels = [model.labels[c] if c < len(model.labels) else str(c) for c in found.classes.tolist()]
        detections = tuple(
            ObjectDetection(tuple(float(v) for v in box), label, int(cls), float(score))
            for box, label, cls, score in zip(found.boxes, labels, found.classes, found.scores)
        )
        overlay = b""
        if options.draw_overlay and item.original is not None:
            overlay = encode_image(draw_boxes(item.original, found.boxes, labels, found.classes, found.scores))
        height, width = item.info.original_hw
        results.append(DetectionResult(detections, width, height, overlay))
    ctx.add_stage("postprocess", time.perf_counter() - started)
    return results
