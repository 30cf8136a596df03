"""Detect: images -> boxes (original-image pixels), labels and scores after NMS, optional overlay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.models import LoadedVersion
from service.pipelines.core import Stages, label_of
from service.pipelines.request import ImageInput, ModelRef, PreparedImage, RequestContext
from service.postprocess.detect import NmsParams, detection_output, detections_from_output
from service.postprocess.draw import draw_boxes, encode_image


@dataclass(frozen=True)
class DetectOptions:
    """Per-request detection options as the client sent them; None means the model's configured default.
    They are checked once, when `nms_params` turns them into NmsParams."""

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


def nms_params(model: LoadedVersion, options: DetectOptions) -> NmsParams:
    """Request options over the model's configured defaults, validated before anything runs."""
    params = NmsParams.from_config(
        model.config.postprocessing.detection,
        score_threshold=options.score_threshold,
        iou_threshold=options.iou_threshold,
        max_detections=options.max_detections,
        class_agnostic=options.class_agnostic,
        classes=options.class_filter or None,
    )
    if model.labels:  # without labels the class count is only known from the output, where it is checked too
        params.check_classes(len(model.labels))
    return params


def detect_one(
    model: LoadedVersion, item: PreparedImage, output: np.ndarray, params: NmsParams, draw_overlay: bool
) -> DetectionResult:
    """One image's answer output -> its DetectionResult: decode, NMS, overlay (pure; runs in a worker thread)."""
    found = detections_from_output(output, model.config.postprocessing.detection, item.info, params)
    labels = [label_of(model, c) for c in found.classes.tolist()]
    detections = tuple(
        ObjectDetection(tuple(float(v) for v in box), label, int(cls), float(score))
        for box, label, cls, score in zip(found.boxes, labels, found.classes, found.scores)
    )
    overlay = b""
    if draw_overlay and item.original is not None:
        overlay = encode_image(draw_boxes(item.original, found.boxes, labels, found.classes, found.scores), "jpeg")
    height, width = item.info.original_hw
    return DetectionResult(detections, width, height, overlay)


async def detect(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef | LoadedVersion,
    images: Sequence[ImageInput],
    options: DetectOptions,
) -> list[DetectionResult]:
    loaded = stages.resolve(ctx, model, task="detection")
    params = nms_params(loaded, options)
    config = loaded.config
    async with stages.holding_originals(ctx, images, options.draw_overlay):
        prepared = await stages.prepare(ctx, loaded, images, keep_original=options.draw_overlay)
        outputs = await stages.run_images(ctx, loaded, prepared)
        return await stages.off_loop(
            ctx,
            [
                lambda item=item, output=output: detect_one(
                    loaded, item, detection_output(config, output), params, options.draw_overlay
                )
                for item, output in zip(prepared, outputs)
            ],
        )
