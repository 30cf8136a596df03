"""The path every request takes between a servicer and the model: images in, raw outputs out.

Servicers convert protobuf to these plain types, the task modules (service/tasks/) post-process,
and this module does the shared middle: resolve the model, decode + preprocess in a thread pool,
submit to the model's dynamic batcher, and time every stage into the request context.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from service.budget import check_kept_pixels, check_model_inputs, fit_to_budget, image_budget
from service.errors import FailedPrecondition, InvalidArgument, ServiceError
from service.metrics import Metrics
from service.models import LoadedVersion, ModelRegistry
from service.preprocess import ResizeInfo, decode_image, preprocess_image
from service.settings import Limits


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: encoded bytes (server-side preprocessing) or a ready CHW tensor."""

    encoded: bytes | None = None
    tensor: np.ndarray | None = None


@dataclass
class RequestContext:
    """Per-request facts that every stage reads or adds to (deadline, id, stage timings)."""

    method: str
    deadline: float | None = None  # absolute time.monotonic() seconds
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: str = ""
    version: str = ""
    images: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class PreparedImage:
    """A model-ready tensor, how it was resized, and (when asked) the decoded original pixels."""

    tensor: np.ndarray
    info: ResizeInfo
    original: np.ndarray | None


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, limits: Limits, preprocess_threads: int):
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=preprocess_threads, thread_name_prefix="preprocess")
        self._image_counters: dict[str, object] = {}  # memoised metrics.images.labels(model): per-request hot path

    def model(self, ctx: RequestContext, name: str, version: str | int | None, task: str | None = None) -> LoadedVersion:
        """Resolve the serving version; NOT_FOUND/UNAVAILABLE, or FAILED_PRECONDITION for the wrong task."""
        if not name:
            raise InvalidArgument("model name is empty")
        ctx.model = name
        loaded = self.registry.get(name, version)
        ctx.version = str(loaded.version)
        if task is not None and loaded.config.task != task:
            raise FailedPrecondition(f"model '{name}' is a {loaded.config.task} model; this call needs a {task} model")
        return loaded

    async def prepare(self, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput], keep_original: bool = False) -> list[PreparedImage]:
        """Decode + preprocess every image off the event loop; a bad image names its index."""
        self._check_count(model, len(images))
        budget = image_budget(model.config, len(images))
        if keep_original:
            check_kept_pixels([image.encoded for image in images if image.encoded], self.limits.max_pixels)
        ctx.images = len(images)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._pool, self._prepare_one, model, image, keep_original, budget)
                for image in images]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        ctx.add_stage("preprocess", time.perf_counter() - started)
        prepared = []
        for index, result in enumerate(results):
            if isinstance(result, ServiceError):
                raise type(result)(f"images[{index}]: {result.message}")
            if isinstance(result, BaseException):
                raise InvalidArgument(f"images[{index}]: could not be processed: {type(result).__name__}: {result}")
            prepared.append(result)
        return prepared

    def _check_count(self, model: LoadedVersion, count: int) -> None:
        if count == 0:
            raise InvalidArgument("request has no images")
        if count > self.limits.max_images_per_request:
            raise InvalidArgument(f"request has {count} images, over the limit of {self.limits.max_images_per_request}")
        if count > model.config.batching.max_batch_size:
            raise InvalidArgument(f"request has {count} images, over the model's max_batch_size {model.config.batching.max_batch_size}")

    def _prepare_one(self, model: LoadedVersion, image: ImageInput, keep_original: bool, budget: int) -> PreparedImage:
        spec = model.config.preprocessing
        if image.tensor is not None:
            tensor = check_image_tensor(model, image.tensor)
            hw = (tensor.shape[1], tensor.shape[2])
            return PreparedImage(tensor, ResizeInfo(hw, (1.0, 1.0), (0.0, 0.0), hw), None)
        if spec is None:
            raise InvalidArgument(f"model '{model.name}' has no preprocessing configured; send tensors, not encoded images")
        spec = fit_to_budget(image.encoded or b"", spec, budget)
        decoded = decode_image(image.encoded or b"", spec, self.limits.max_pixels)
        tensor, info = preprocess_image(decoded, spec, source_order="bgr")
        return PreparedImage(tensor, info, decoded if keep_original else None)

    async def run_images(self, ctx: RequestContext, model: LoadedVersion, prepared: Sequence[PreparedImage], output_names=None) -> list[dict[str, np.ndarray]]:
        """Run every image; same-shaped images go as one batch. Returns per-image outputs (no batch axis)."""
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.tensor.shape, []).append(index)
        input_name = model.config.inputs[0].name
        runs = [self.execute(ctx, model, {input_name: np.stack([prepared[i].tensor for i in idx])}, output_names) for idx in groups.values()]
        per_image: list[dict[str, np.ndarray]] = [{} for _ in prepared]
        for idx, outputs in zip(groups.values(), await asyncio.gather(*runs)):
            for position, index in enumerate(idx):
                per_image[index] = {name: value[position] for name, value in outputs.items()}
        return per_image

    async def execute(self, ctx: RequestContext, model: LoadedVersion, inputs: dict[str, np.ndarray], output_names=None) -> dict[str, np.ndarray]:
        """Submit one [n, ...] batch to the model's batcher; records queue and inference time."""
        check_model_inputs(model.config, inputs)
        started = time.monotonic()
        outputs, queue_wait = await model.batcher.submit(inputs, ctx.deadline)
        ctx.add_stage("queue", queue_wait)
        ctx.add_stage("inference", time.monotonic() - started - queue_wait)
        count = next(iter(inputs.values())).shape[0]
        ctx.images = ctx.images or count  # tensor requests skip prepare(), which counts images
        counter = self._image_counters.get(model.name)
        if counter is None:
            counter = self._image_counters[model.name] = self.metrics.images.labels(model.name)
        counter.inc(count)
        if output_names:
            return {name: outputs[name] for name in output_names}
        return outputs

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_image_tensor(model: LoadedVersion, tensor: np.ndarray) -> np.ndarray:
    """A client-made CHW tensor must match the model's input exactly and be finite."""
    spec = model.config.inputs[0]
    expected = spec.dims[1:]
    if tensor.dtype != np.float32:
        raise InvalidArgument(f"image tensor must be float32, got {tensor.dtype}")
    if tensor.ndim != len(expected) or any(e != -1 and e != s for e, s in zip(expected, tensor.shape)):
        raise InvalidArgument(f"image tensor shape {list(tensor.shape)} does not match the model input {list(expected)} (no batch axis)")
    if not np.isfinite(tensor).all():
        raise InvalidArgument("image tensor contains NaN or Inf values")
    return tensor
