"""Classify: images -> top-k (label, class index, score) per image."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.dataplane import DataPlane, ImageInput, PreparedImage, RequestContext
from service.models import LoadedVersion
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


def label_of(model: LoadedVersion, index: int) -> str:
    labels = model.labels
    return labels[index] if index < len(labels) else str(index)


def probabilities_of(model: LoadedVersion, outputs: np.ndarray) -> np.ndarray:
    """[N, C] model output -> probabilities, applying softmax when the model emits logits."""
    scores = outputs.reshape(outputs.shape[0], -1).astype(np.float32)
    return softmax(scores) if model.config.postprocessing.scores == "logits" else scores


async def classify(dp: DataPlane, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput], requested_top_k: int, keep_original: bool = False) -> list[Classification]:
    prepared = await dp.prepare(ctx, model, images, keep_original=keep_original)
    outputs = await dp.run_images(ctx, model, prepared)
    started = time.perf_counter()
    answer = model.config.answer_output
    probabilities = probabilities_of(model, np.stack([o[answer] for o in outputs]))
    k = resolve_top_k(requested_top_k, model.config.postprocessing.top_k, probabilities.shape[1])
    indices, scores = top_k(probabilities, k)
    results = []
    for row in range(len(prepared)):
        predictions = tuple(
            ClassScore(label_of(model, int(i)), int(i), float(s)) for i, s in zip(indices[row], scores[row])
        )
        results.append(Classification(predictions, probabilities[row], outputs[row], prepared[row]))
    ctx.add_stage("postprocess", time.perf_counter() - started)
    return results
