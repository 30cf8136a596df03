"""Segment: images -> per-pixel class maps at the original size, class coverage, optional overlay.

The model's answer output is per-class logits [N, C, h, w] over the model input. Each image's
logits are resized bilinearly to the original image (padding removed), then arg-maxed; see
service/postprocess/segment.py for the geometry. A one-channel map [N, 1, h, w] with
`postprocessing.segmentation` is thresholded instead (background 0, foreground 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.errors import FailedPrecondition, InvalidArgument
from service.models import LoadedVersion
from service.pipelines.core import Stages, label_of
from service.pipelines.request import ImageInput, ModelRef, PreparedImage, RequestContext
from service.postprocess.segment import (
    class_pixel_counts,
    encode_label_map,
    label_map_from_logits,
    one_channel_planes,
    overlay_png,
    probability_maps,
)


@dataclass(frozen=True)
class ClassCoverage:
    """How much of one image a class covers."""

    class_index: int
    label: str
    pixels: int
    fraction: float  # pixels / (width * height)


@dataclass(frozen=True)
class SegmentationResult:
    label_map: np.ndarray  # [H, W] class indices at the original size (uint8, or uint16 > 256 classes)
    label_map_png: bytes
    classes: tuple[ClassCoverage, ...]  # classes present, in class-index order
    overlay_png: bytes = b""
    probabilities: np.ndarray | None = None  # float32 [C, h, w] at model resolution, padding removed

    @property
    def height(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.label_map.shape[1])


def _check_logits(model: LoadedVersion, logits: np.ndarray) -> np.ndarray:
    """The load-time rule (service/graph_checks.py) again on the real output: never argmax one channel."""
    one_channel = model.config.postprocessing.segmentation is not None
    if logits.ndim != 3 or (logits.shape[0] != 1 if one_channel else logits.shape[0] < 2):
        need = "a one-channel map [1, H, W]" if one_channel else "class logits [C, H, W] with C >= 2"
        raise FailedPrecondition(
            f"model '{model.name}' output '{model.config.answer_output}' has per-image shape {list(logits.shape)}; "
            f"segmentation needs {need}"
        )
    return logits


def segment_one(
    model: LoadedVersion, prepared: PreparedImage, logits: np.ndarray, overlay: bool, probabilities: bool
) -> SegmentationResult:
    """One image's logits [C, h, w] -> its SegmentationResult (pure; runs in a worker thread)."""
    logits = _check_logits(model, logits)
    apply_softmax = model.config.postprocessing.scores == "logits"
    one_channel = model.config.postprocessing.segmentation
    if one_channel is not None:  # thresholded into background (0) and foreground (1)
        logits, scores = one_channel_planes(logits, one_channel.threshold, one_channel.activation == "sigmoid")
        apply_softmax = False
    else:
        scores = logits
    num_classes = logits.shape[0]
    label_map = label_map_from_logits(logits, prepared.info)
    counts = class_pixel_counts(label_map, num_classes)
    total = float(label_map.size)
    classes = tuple(
        ClassCoverage(int(c), label_of(model, int(c)), int(counts[c]), float(counts[c] / total))
        for c in np.flatnonzero(counts)
    )
    return SegmentationResult(
        label_map=label_map,
        label_map_png=encode_label_map(label_map),
        classes=classes,
        overlay_png=overlay_png(prepared.original, label_map, num_classes) if overlay else b"",
        probabilities=probability_maps(scores, prepared.info, apply_softmax) if probabilities else None,
    )


async def segment(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef | LoadedVersion,
    images: Sequence[ImageInput],
    overlay: bool,
    probabilities: bool,
) -> list[SegmentationResult]:
    loaded = stages.resolve(ctx, model, task="segmentation")
    if overlay and any(image.tensor is not None for image in images):
        raise InvalidArgument("overlay needs encoded images (a tensor image has no original pixels to draw on)")
    answer = loaded.config.answer_output
    classes = next(output.dims for output in loaded.config.outputs if output.name == answer)[1]
    mask_bytes = 1 if 1 <= classes <= 256 else 2  # the label map's dtype (uint8, or uint16: label_map_from_logits)
    async with stages.holding_originals(ctx, images, overlay, mask_bytes):
        prepared = await stages.prepare(ctx, loaded, images, keep_original=overlay)
        outputs = await stages.run_images(ctx, loaded, prepared)
        # Resizing C full-size planes is real work for large images: off the event loop, one job per image.
        return await stages.off_loop(
            ctx,
            [
                lambda item=item, output=output: segment_one(loaded, item, output[answer], overlay, probabilities)
                for item, output in zip(prepared, outputs)
            ],
        )
