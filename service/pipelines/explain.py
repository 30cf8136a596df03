"""Explain: a class activation map per image, for a requested class or each image's top-1 class.

The model's `postprocessing.cam` (docs/cam.md) says how:
- method "cam": one forward pass. The features output f [K, h, w] (the input of the global average
  pooling) and the classifier weights W [C, K] (cam_weights.py) give CAM_c = ReLU(Σ_k W[c, k] f_k).
- method "score_cam": the forward pass gives the activations; then up to `max_maps` masked copies
  of the input are scored through the same model's dynamic batcher, in chunks of at most
  max_batch_size, and the activations are weighted by the class score each mask keeps.
Both reuse the classify pipeline (keep_original=True), so Classify with `explain` costs nothing
extra for "cam" and the overlay is drawn on the decoded original image.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.config import CamConfig
from service.errors import FailedPrecondition, InvalidArgument
from service.models import LoadedVersion
from service.pipelines.cam_weights import cam_config, checked_weights
from service.pipelines.classify import Classification, classify
from service.pipelines.core import Stages, label_of
from service.pipelines.request import ImageInput, ModelRef, RequestContext
from service.postprocess import cam as cam_math
from service.postprocess.draw import OVERLAY_FORMATS


@dataclass(frozen=True)
class ExplainOptions:
    """class_index None: each image's top-1 class. overlay_format: "jpeg" or "png"."""

    class_index: int | None = None
    overlay: bool = False
    overlay_format: str = "jpeg"


@dataclass(frozen=True)
class ActivationMapResult:
    method: str
    class_index: int
    label: str
    score: float  # softmax probability of the class for this image
    raw: np.ndarray  # float32 [h, w], ReLU applied, unnormalised
    upsampled: np.ndarray  # float32 [H, W] on the original image, in [0, 1]
    overlay: bytes = b""


def check_options(options: ExplainOptions, num_classes: int) -> None:
    """The only checks of ExplainOptions: the overlay format and the class index's range."""
    if options.overlay_format not in OVERLAY_FORMATS:
        raise InvalidArgument(
            f"overlay_format must be one of {OVERLAY_FORMATS} (or empty), got {options.overlay_format!r}"
        )
    index = options.class_index
    if index is not None and not 0 <= index < num_classes:
        raise InvalidArgument(
            f"class_index {index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )


async def explain(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef | LoadedVersion,
    images: Sequence[ImageInput],
    options: ExplainOptions,
) -> list[ActivationMapResult]:
    """One map per image, in request order (classification runs once, with top-1)."""
    _, maps = await classify_and_explain(stages, ctx, model, images, 1, options)
    return maps


async def classify_and_explain(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef | LoadedVersion,
    images: Sequence[ImageInput],
    top_k: int,
    options: ExplainOptions,
) -> tuple[list[Classification], list[ActivationMapResult]]:
    """Classify with `explain`: the classifications and a map per image, from one forward pass."""
    loaded = stages.resolve(ctx, model, task="classification")
    cam = cam_config(loaded)
    async with stages.holding_originals(ctx, images, keep_original=True):  # the originals, until the maps
        classifications = await classify(stages, ctx, loaded, images, top_k, keep_original=True)
        num_classes = len(classifications[0].probabilities)
        check_options(options, num_classes)
        indices = [
            options.class_index if options.class_index is not None else c.predictions[0].class_index
            for c in classifications
        ]
        if cam.method == "cam":
            channels = classifications[0].outputs[cam.features_output].shape[0]
            weights = await asyncio.get_running_loop().run_in_executor(
                None, checked_weights, loaded, cam, num_classes, channels
            )
            raws = [
                cam_math.class_activation_map(c.outputs[cam.features_output], weights, i)
                for c, i in zip(classifications, indices)
            ]
        else:
            raws = await asyncio.gather(
                *(score_cam(stages, ctx, loaded, cam, c, i) for c, i in zip(classifications, indices))
            )
        maps = await stages.off_loop(
            ctx,
            [
                lambda c=c, i=i, raw=raw: finish_map(loaded, cam.method, c, i, raw, options)
                for c, i, raw in zip(classifications, indices, raws)
            ],
        )
        return classifications, maps


async def score_cam(
    stages: Stages,
    ctx: RequestContext,
    model: LoadedVersion,
    cam: CamConfig,
    classification: Classification,
    class_index: int,
) -> np.ndarray:
    """Score-CAM of one image: ≤ max_maps masked inputs through the batcher → raw map [h, w]."""
    activations = classification.outputs[cam.features_output]
    if activations.ndim != 3:
        raise FailedPrecondition(
            f"model '{model.name}': features output has shape {list(activations.shape)}, need [K, h, w]"
        )
    tensor = classification.prepared.tensor
    chosen = cam_math.select_maps(activations, cam.max_maps)
    if len(chosen) == 0:
        return np.zeros(activations.shape[1:], dtype=np.float32)
    batch = cam_math.masked_inputs(tensor, cam_math.score_cam_masks(activations, chosen, tensor.shape[1:]))
    scores = await class_scores(stages, ctx, model, batch, class_index)
    return cam_math.score_cam_map(activations, chosen, scores)


async def class_scores(
    stages: Stages, ctx: RequestContext, model: LoadedVersion, batch: np.ndarray, class_index: int
) -> np.ndarray:
    """batch [M, C, H, W] -> the class's score per input [M]: logits, or log-probabilities when the
    model outputs probabilities. Chunks of ≤ max_batch_size go through the dynamic batcher."""
    size, answer = model.config.batching.max_batch_size, model.config.answer_output
    input_name = model.config.inputs[0].name
    chunks = [batch[start : start + size] for start in range(0, len(batch), size)]
    outputs = await asyncio.gather(*(stages.submit(ctx, model, {input_name: chunk}, (answer,)) for chunk in chunks))
    values = np.concatenate([o[answer].reshape(len(chunk), -1) for o, chunk in zip(outputs, chunks)])[:, class_index]
    if model.config.postprocessing.scores == "probabilities":
        values = np.log(np.maximum(values, 1e-30))
    return values.astype(np.float32)


def finish_map(
    model: LoadedVersion,
    method: str,
    classification: Classification,
    class_index: int,
    raw: np.ndarray,
    options: ExplainOptions,
) -> ActivationMapResult:
    """Upsample onto the original image, normalise, render the overlay (pure; runs in a worker thread)."""
    prepared = classification.prepared
    heat = cam_math.min_max_normalise(cam_math.upsample_map(raw, prepared.info))
    overlay = b""
    if options.overlay:
        image = prepared.original
        if image is None:  # a preprocessed tensor: draw on the tensor itself
            image = cam_math.tensor_to_pixels(prepared.tensor, model.config.preprocessing)
        overlay = cam_math.render_overlay(image, heat, options.overlay_format)
    return ActivationMapResult(
        method,
        class_index,
        label_of(model, class_index),
        float(classification.probabilities[class_index]),
        raw,
        heat,
        overlay,
    )
