"""Infer: the Open Inference Protocol's raw tensors -> the model's raw outputs.

Named arrays go straight to the model's batcher once they match the config (names, dtypes,
shapes, batch size); a BYTES input holding encoded images runs the model's server-side
preprocessing first. An output asked for with the `classification` parameter comes back as
Triton's top-k "score:index:label" strings (scores are the model's raw output values).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.dtypes import aligned, numpy_of_config, v2_of_numpy
from service.errors import InvalidArgument
from service.models import LoadedVersion
from service.pipelines.core import Stages
from service.pipelines.request import ImageInput, ModelRef, RequestContext
from service.postprocess.classify import top_k


@dataclass(frozen=True)
class OutputRequest:
    """One requested output; classification: the value of its `classification` parameter (0: none)."""

    name: str
    classification: object = 0


@dataclass(frozen=True)
class InferResult:
    model: LoadedVersion
    outputs: list[tuple[str, np.ndarray]]  # in the order asked for (every output when none was)


async def infer(
    stages: Stages,
    ctx: RequestContext,
    model: ModelRef,
    arrays: dict[str, np.ndarray],
    outputs: Sequence[OutputRequest],
) -> InferResult:
    loaded = stages.resolve(ctx, model)
    started = time.perf_counter()
    inputs = await model_inputs(stages, ctx, loaded, arrays)
    # V2 ModelStatistics' compute_input: everything that turns the request into model inputs (image
    # decoding included), recorded for every request, so its count equals compute_infer's as
    # perf_analyzer requires
    ctx.stages["preprocess"] = time.perf_counter() - started
    wanted = requested_outputs(loaded, outputs)
    results = await stages.submit(ctx, loaded, inputs, tuple(name for name, _ in wanted))
    started = time.perf_counter()
    answer = [(name, classification_strings(loaded, results[name], k) if k else results[name]) for name, k in wanted]
    ctx.add_stage("postprocess", time.perf_counter() - started)
    return InferResult(loaded, answer)


async def model_inputs(
    stages: Stages, ctx: RequestContext, loaded: LoadedVersion, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The request's named arrays -> the model's inputs: the single place every V2 input source
    (the request's own tensor contents today) is checked against the config; BYTES image inputs
    are preprocessed here."""
    specs = {spec.name: spec for spec in loaded.config.inputs}
    if arrays.keys() != specs.keys():  # one set comparison on the common, correct path
        unknown = sorted(set(arrays) - set(specs))
        if unknown:
            raise InvalidArgument(f"unknown input(s) {unknown}; model '{loaded.name}' takes {sorted(specs)}")
        missing = sorted(set(specs) - set(arrays))
        raise InvalidArgument(f"missing input(s) {missing} for model '{loaded.name}'")
    inputs = {}
    for name, array in arrays.items():
        spec = specs[name]
        if array.dtype == object:
            inputs[name] = await preprocess_bytes(stages, ctx, loaded, name, array)
            continue
        expected = numpy_of_config(spec.dtype)
        if array.dtype != expected:
            raise InvalidArgument(
                f"input '{name}' has datatype {v2_of_numpy(array.dtype)}, model expects {v2_of_numpy(expected)}"
            )
        check_shape(name, array.shape, spec.dims)
        if stages.limits.v2_reject_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidArgument(
                f"input '{name}' contains NaN or Inf values (this server runs with --v2-reject-non-finite true)"
            )
        inputs[name] = array
    batch_sizes = {a.shape[0] for a in inputs.values()}
    if len(batch_sizes) != 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes.pop() > loaded.config.batching.max_batch_size:
        raise InvalidArgument(f"batch exceeds the model's max_batch_size {loaded.config.batching.max_batch_size}")
    return {name: aligned(array) for name, array in inputs.items()}  # checked first: a refusal copies nothing


async def preprocess_bytes(
    stages: Stages, ctx: RequestContext, loaded: LoadedVersion, name: str, array: np.ndarray
) -> np.ndarray:
    """A BYTES input [N] or [N, 1] of encoded images -> one float32 batch [N, C, H, W]."""
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
        raise InvalidArgument(
            f"BYTES input '{name}' must have shape [N] or [N, 1] (one encoded image per "
            f"batch item), got {list(array.shape)}"
        )
    images = [ImageInput(encoded=bytes(item)) for item in array.reshape(-1)]
    async with stages.holding_originals(ctx, images):
        prepared = await stages.prepare(ctx, loaded, images)
    shapes = {p.tensor.shape for p in prepared}
    if len(shapes) != 1:
        raise InvalidArgument(
            f"images of BYTES input '{name}' preprocess to different sizes {sorted(shapes)}; "
            "send them in separate requests"
        )
    return np.stack([p.tensor for p in prepared])


def check_shape(name: str, shape: tuple, dims: tuple[int, ...]) -> None:
    if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims[1:], shape[1:])):
        raise InvalidArgument(f"input '{name}' has shape {list(shape)}, model expects {list(dims)} (-1: any size)")
    if shape[0] == 0:
        raise InvalidArgument(f"input '{name}' has an empty batch")


def requested_outputs(loaded: LoadedVersion, outputs: Sequence[OutputRequest]) -> list[tuple[str, int]]:
    """(output name, classification k or 0) pairs; every output when none is requested."""
    names = [spec.name for spec in loaded.config.outputs]
    if not outputs:
        return [(name, 0) for name in names]
    wanted, seen = [], set()
    for output in outputs:
        if output.name not in names:
            raise InvalidArgument(f"unknown output '{output.name}'; model '{loaded.name}' has {names}")
        if output.name in seen:
            raise InvalidArgument(f"output '{output.name}' is requested twice")
        seen.add(output.name)
        classes = output.classification
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise InvalidArgument(
                f"output '{output.name}': classification must be a non-negative integer, got {classes!r}"
            )
        wanted.append((output.name, classes))
    return wanted


def classification_strings(loaded: LoadedVersion, values: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification extension: [N, k] BYTES "score:index:label", highest first
    ("score:index" for a class the labels file does not name, as Triton does)."""
    flat = values.reshape(values.shape[0], -1).astype(np.float32)
    k = min(k, flat.shape[1])
    indices, scores = top_k(flat, k)
    labels = loaded.labels
    rows = [
        [f"{s:f}:{i}:{labels[i]}" if i < len(labels) else f"{s:f}:{i}" for i, s in zip(ri, rs)]
        for ri, rs in zip(indices, scores)
    ]
    return np.array(rows, dtype=object).reshape(flat.shape[0], k)
