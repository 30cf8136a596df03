"""Explain: a class activation map per image, for a requested class or each image's top-1 class.

The model's `postprocessing.cam` (docs/cam.md) says how:
- method "cam": one forward pass. The features output f [K, h, w] (the input of the global average
  pooling) and the classifier weights W [C, K], read once from the ONNX initializer the config
  names, give CAM_c = ReLU(Σ_k W[c, k] f_k).
- method "score_cam": the forward pass gives the activations; then up to `max_maps` masked copies
  of the input are scored through the same model's dynamic batcher, in chunks of at most
  max_batch_size, and the activations are weighted by the class score each mask keeps.
Both reuse `classify(..., keep_original=True)`, so Classify with `explain` costs nothing extra for
"cam" and the overlay is drawn on the decoded original image.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from service.config import CamConfig
from service.dataplane import DataPlane, ImageInput, RequestContext
from service.errors import FailedPrecondition, InvalidArgument
from service.models import LoadedVersion
from service.postprocess import cam as cam_math
from service.tasks.classification import Classification, classify, label_of


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


def cam_config(model: LoadedVersion) -> CamConfig:
    """The model's CAM source, or FAILED_PRECONDITION saying what the config lacks."""
    cam = model.config.postprocessing.cam
    if cam is None or cam.features_output is None:
        raise FailedPrecondition(
            f"model '{model.name}' has no class activation maps: its config needs postprocessing.cam with a "
            "features_output (see docs/cam.md)"
        )
    if cam.method == "cam" and cam.weights_initializer is None:
        raise FailedPrecondition(f"model '{model.name}': postprocessing.cam method 'cam' needs weights_initializer")
    return cam


def check_options(options: ExplainOptions, num_classes: int) -> None:
    if options.overlay_format not in cam_math.OVERLAY_FORMATS:
        raise InvalidArgument(f"overlay_format must be 'jpeg' or 'png' (or empty), got {options.overlay_format!r}")
    index = options.class_index
    if index is not None and not 0 <= index < num_classes:
        raise InvalidArgument(f"class_index {index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")


@lru_cache(maxsize=16)
def _weights_from_file(path: str, name: str, _mtime_ns: int, _size: int) -> np.ndarray:
    model = onnx.load(path)  # external data, if any, is read from beside the file
    for initializer in model.graph.initializer:
        if initializer.name == name:
            return np.ascontiguousarray(numpy_helper.to_array(initializer), dtype=np.float32)
    raise FailedPrecondition(f"{path}: no initializer named '{name}' (postprocessing.cam.weights_initializer)")


def read_class_weights(path: str | Path, name: str) -> np.ndarray:
    """The classifier weights [C, K] stored as initializer `name` in an ONNX file.

    Cached per (file, modification time, size): read once per model version, re-read if replaced.
    """
    stat = Path(path).stat()
    return _weights_from_file(str(path), name, stat.st_mtime_ns, stat.st_size)


def _checked_weights(model: LoadedVersion, cam: CamConfig, num_classes: int, channels: int) -> np.ndarray:
    weights = read_class_weights(model.source.model_path(model.version), cam.weights_initializer)
    if weights.shape != (num_classes, channels):
        raise FailedPrecondition(
            f"model '{model.name}': initializer '{cam.weights_initializer}' has shape {list(weights.shape)}, "
            f"CAM needs [classes, feature maps] = [{num_classes}, {channels}]"
        )
    return weights


async def explain(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput],
                  options: ExplainOptions) -> list[ActivationMapResult]:
    """One map per image, in request order (classification runs once, with top-1)."""
    cam_config(model)
    classifications = await classify(dp, ctx, model, images, 1, keep_original=True)
    return await explain_classifications(dp, ctx, model, classifications, options)


async def explain_classifications(dp: DataPlane, ctx: RequestContext, model: LoadedVersion,
                                  classifications: Sequence[Classification], options: ExplainOptions) -> list[ActivationMapResult]:
    """Maps for images already classified (with keep_original=True for overlays on the original)."""
    cam = cam_config(model)
    check_options(options, len(classifications[0].probabilities))
    indices = [options.class_index if options.class_index is not None else c.predictions[0].class_index
               for c in classifications]
    loop = asyncio.get_running_loop()
    if cam.method == "cam":
        num_classes, channels = len(classifications[0].probabilities), classifications[0].outputs[cam.features_output].shape[0]
        weights = await loop.run_in_executor(None, _checked_weights, model, cam, num_classes, channels)
        raws = [cam_math.class_activation_map(c.outputs[cam.features_output], weights, i) for c, i in zip(classifications, indices)]
    else:
        raws = await asyncio.gather(*(score_cam(dp, ctx, model, cam, c, i) for c, i in zip(classifications, indices)))
    started = time.perf_counter()
    jobs = [loop.run_in_executor(None, _finish, model, cam.method, c, i, raw, options)
            for c, i, raw in zip(classifications, indices, raws)]
    results = list(await asyncio.gather(*jobs))
    ctx.add_stage("postprocess", time.perf_counter() - started)
    return results


async def score_cam(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, cam: CamConfig,
                    classification: Classification, class_index: int) -> np.ndarray:
    """Score-CAM of one image: ≤ max_maps masked inputs through the batcher → raw map [h, w]."""
    activations = classification.outputs[cam.features_output]
    if activations.ndim != 3:
        raise FailedPrecondition(f"model '{model.name}': features output has shape {list(activations.shape)}, need [K, h, w]")
    tensor = classification.prepared.tensor
    chosen = cam_math.select_maps(activations, cam.max_maps)
    if len(chosen) == 0:
        return np.zeros(activations.shape[1:], dtype=np.float32)
    batch = cam_math.masked_inputs(tensor, cam_math.score_cam_masks(activations, chosen, tensor.shape[1:]))
    scores = await class_scores(dp, ctx, model, batch, class_index)
    return cam_math.score_cam_map(activations, chosen, scores)


async def class_scores(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, batch: np.ndarray, class_index: int) -> np.ndarray:
    """batch [M, C, H, W] -> the class's score per input [M]: logits, or log-probabilities when the
    model outputs probabilities. Chunks of ≤ max_batch_size go through the dynamic batcher."""
    size, answer = model.config.batching.max_batch_size, model.config.answer_output
    input_name = model.config.inputs[0].name
    chunks = [batch[start : start + size] for start in range(0, len(batch), size)]
    outputs = await asyncio.gather(*(dp.execute(ctx, model, {input_name: chunk}, (answer,)) for chunk in chunks))
    values = np.concatenate([o[answer].reshape(len(chunk), -1) for o, chunk in zip(outputs, chunks)])[:, class_index]
    if model.config.postprocessing.scores == "probabilities":
        values = np.log(np.maximum(values, 1e-30))
    return values.astype(np.float32)


def _finish(model: LoadedVersion, method: str, classification: Classification, class_index: int,
            raw: np.ndarray, options: ExplainOptions) -> ActivationMapResult:
    """Upsample onto the original image, normalise, render the overlay (runs in a worker thread)."""
    prepared = classification.prepared
    heat = cam_math.min_max_normalise(cam_math.upsample_map(raw, prepared.info))
    overlay = b""
    if options.overlay:
        image = prepared.original
        if image is None:  # a preprocessed tensor: draw on the tensor itself
            image = cam_math.tensor_to_pixels(prepared.tensor, model.config.preprocessing)
        overlay = cam_math.render_overlay(image, heat, options.overlay_format)
    return ActivationMapResult(method, class_index, label_of(model, class_index),
                               float(classification.probabilities[class_index]), raw, heat, overlay)
