"""Classify: images -> top-k (label, class index, score) per image."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.models import LoadedVersion
from service.pipelines.core import Stages, label_of
from service.pipelines.request import ImageInput, ModelRef, PreparedImage, RequestContext
from service.postprocess.classify import resolve_top_k, softmax, top_k


@dataclass(frozen=True)
class ClassScore:
    label: str
    class_index: int
    score: float


@dataclass(frozen=True)
class Classification:
    """One image's answer, plus what Explain needs to reuse this run."""

    predictions: tuple[ClassScore, ...]
    probabilities: np.ndarray  # [C]
    outputs: dict[str, np.ndarray]  # every raw output of this image (no batch axis)
    prepared: PreparedImage


def probabilities_of(model: LoadedVersion, outputs: np.ndarray) -> np.ndarray:
    """[N, C] model output -> probabilities, applying softmax when the model emits logits."""
    scores = outputs.reshape(outputs.shape[0], -1).astype(np.float32)
    return softmax(scores) if model.config.postprocessing.scores == "logits" else scores


async def classify(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef | LoadedVersion,
    images: Sequence[ImageInput],
    requested_top_k: int,
    keep_original: bool = False,
) -> list[Classification]:
    """top_k 0 means the model's default. keep_original keeps the decoded pixels (Explain's overlays).

    Softmax and top-k of [N, C] scores take microseconds, less than a hop to a worker thread, so
    this post-processing alone stays on the event loop.
    """
    loaded = stages.resolve(ctx, model, task="classification")
    async with stages.holding_originals(ctx, images, keep_original):
        prepared = await stages.prepare(ctx, loaded, images, keep_original=keep_original)
        outputs = await stages.run_images(ctx, loaded, prepared)
        started = time.perf_counter()
        probabilities = probabilities_of(loaded, np.stack([o[loaded.config.answer_output] for o in outputs]))
        k = resolve_top_k(requested_top_k, loaded.config.postprocessing.top_k, probabilities.shape[1])
        indices, scores = top_k(probabilities, k)
        results = []
        for row in range(len(prepared)):
            predictions = tuple(
                ClassScore(label_of(loaded, int(i)), int(i), float(s)) for i, s in zip(indices[row], scores[row])
            )
            results.append(Classification(predictions, probabilities[row], outputs[row], prepared[row]))
        ctx.add_stage("postprocess", time.perf_counter() - started)
        return results
