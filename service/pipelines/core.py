"""The stages every pipeline shares, each timed into the request context:

resolve the model (`resolve`) -> decode + preprocess in the thread pool (`prepare`, stage
"preprocess") -> the model's dynamic batcher (`submit`, stages "queue" and "inference") ->
post-processing in the thread pool (`off_loop`, stage "postprocess"). The pipelines of
service/pipelines/ compose these; nothing here knows a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Sequence, TypeVar

import numpy as np

from service.budget import check_kept_pixels, check_model_inputs, fit_to_budget, image_budget
from service.errors import FailedPrecondition, InvalidArgument, ServiceError
from service.inflight import InflightBudget, original_size_bytes
from service.metrics import Metrics
from service.models import LoadedVersion, ModelRegistry
from service.pipelines.request import ImageInput, ModelRef, PreparedImage, RequestContext
from service.dtypes import numpy_of_config
from service.preprocess import ResizeInfo, decode_image, preprocess_image
from service.settings import Limits

T = TypeVar("T")


def label_of(model: LoadedVersion, index: int) -> str:
    """The class's name from the model's labels file, or its index as text when it has none."""
    labels = model.labels
    return labels[index] if index < len(labels) else str(index)


class Stages:
    """Model resolution, the preprocessing thread pool and batcher submission, shared by every pipeline."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, limits: Limits, preprocess_threads: int):
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=preprocess_threads, thread_name_prefix="preprocess")
        self._image_counters: dict[str, object] = {}  # memoised metrics.images.labels(model): per-request hot path
        self.originals = InflightBudget(limits.max_decoded_bytes)

    def resolve(self, ctx: RequestContext, model: ModelRef | LoadedVersion, task: str | None = None) -> LoadedVersion:
        """The serving version; NOT_FOUND/UNAVAILABLE, or FAILED_PRECONDITION for the wrong task.

        A LoadedVersion passes through: a vision stream pins the version its first frame resolved.
        """
        if isinstance(model, ModelRef):
            if not model.name:
                raise InvalidArgument("model name is empty")
            ctx.model = model.name
            model = self.registry.get(model.name, model.version)
        ctx.model, ctx.version = model.name, str(model.version)
        if task is not None and model.config.task != task:
            raise FailedPrecondition(
                f"model '{model.name}' is a {model.config.task} model; this call needs a {task} model"
            )
        return model

    @contextlib.asynccontextmanager
    async def holding_originals(
        self,
        ctx: RequestContext,
        images: Sequence[ImageInput],
        keep_original: bool = False,
        mask_bytes_per_pixel: int = 0,
    ) -> AsyncIterator[None]:
        """Reserve what the request will hold at its images' original size in the server-wide
        budget (service/inflight.py) for the body: a pipeline wraps everything from decoding to its
        answer in it. A nested call (explain around classify) holds nothing more."""
        if ctx.holds_originals:
            yield
            return
        if len(images) > self.limits.max_images_per_request:  # counted before any header is read
            raise InvalidArgument(
                f"request has {len(images)} images, over the limit of {self.limits.max_images_per_request}"
            )
        encoded = [image.encoded for image in images if image.encoded]
        if keep_original:  # over the pixel limit is INVALID_ARGUMENT, whatever room there is
            check_kept_pixels(encoded, self.limits.max_pixels)
        nbytes = original_size_bytes(encoded, keep_original, mask_bytes_per_pixel, self.limits.max_pixels)
        async with self.originals.reserve(nbytes, ctx.deadline):
            ctx.holds_originals = True
            try:
                yield
            finally:
                ctx.holds_originals = False

    async def prepare(
        self, ctx: RequestContext, model: LoadedVersion, images: Sequence[ImageInput], keep_original: bool = False
    ) -> list[PreparedImage]:
        """Decode + preprocess every image off the event loop; a bad image names its index. Runs
        inside `holding_originals` (every pipeline wraps it), which has already counted the images
        and checked the pixels kept."""
        budget = self._check_budget(model, images)
        ctx.images = len(images)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self._pool, self._prepare_one, model, image, keep_original, budget) for image in images
        ]
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

    def _check_budget(self, model: LoadedVersion, images: Sequence[ImageInput]) -> int:
        """What the model allows an image request, checked before anything is decoded (the count
        against the server's limit and the kept pixels are holding_originals' checks). Returns each
        image's share of the model's input-byte budget (service/budget.py), which native-resolution
        models downscale to."""
        count = len(images)
        if count == 0:
            raise InvalidArgument("request has no images")
        if count > model.config.batching.max_batch_size:
            raise InvalidArgument(
                f"request has {count} images, over the model's max_batch_size {model.config.batching.max_batch_size}"
            )
        return image_budget(model.config, count)

    def _prepare_one(self, model: LoadedVersion, image: ImageInput, keep_original: bool, budget: int) -> PreparedImage:
        spec = model.config.preprocessing
        if image.tensor is not None:
            tensor = check_image_tensor(model, image.tensor)
            hw = (tensor.shape[1], tensor.shape[2])
            return PreparedImage(tensor, ResizeInfo(hw, (1.0, 1.0), (0.0, 0.0), hw), None)
        if spec is None:
            raise InvalidArgument(
                f"model '{model.name}' has no preprocessing configured; send tensors, not encoded images"
            )
        spec = fit_to_budget(image.encoded or b"", spec, budget)
        decoded = decode_image(image.encoded or b"", spec, self.limits.max_pixels)
        tensor, info = preprocess_image(decoded, spec, source_order="bgr")
        return PreparedImage(tensor, info, decoded if keep_original else None)

    async def run_images(
        self,
        ctx: RequestContext,
        model: LoadedVersion,
        prepared: Sequence[PreparedImage],
        output_names: Sequence[str] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Run every image; same-shaped images go as one batch. Returns per-image outputs (no batch axis)."""
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.tensor.shape, []).append(index)
        input_name = model.config.inputs[0].name
        # preprocessing yields float32; a float16 (or float64) graph gets its own type, as its config says
        dtype = numpy_of_config(model.config.inputs[0].dtype)
        runs = [
            self.submit(
                ctx,
                model,
                {input_name: np.stack([prepared[i].tensor for i in idx]).astype(dtype, copy=False)},
                output_names,
            )
            for idx in groups.values()
        ]
        per_image: list[dict[str, np.ndarray]] = [{} for _ in prepared]
        for idx, outputs in zip(groups.values(), await asyncio.gather(*runs)):
            for position, index in enumerate(idx):
                per_image[index] = {name: value[position] for name, value in outputs.items()}
        return per_image

    async def submit(
        self,
        ctx: RequestContext,
        model: LoadedVersion,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Submit one [n, ...] batch to the model's batcher: the single door to the batcher, so the
        checks on what a request puts in the queue (shapes the graph can take, bytes) live here.
        Records queue and inference time."""
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

    async def off_loop(self, ctx: RequestContext, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run post-processing jobs (pure functions of one image's outputs) in worker threads, in
        parallel, timed as the "postprocess" stage: drawing, encoding and resizing never block the loop."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, job) for job in jobs))
        ctx.add_stage("postprocess", time.perf_counter() - started)
        return list(results)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_image_tensor(model: LoadedVersion, tensor: np.ndarray) -> np.ndarray:
    """A client-made CHW tensor must match the model's input exactly and be finite."""
    spec = model.config.inputs[0]
    expected = spec.dims[1:]
    if tensor.dtype != np.float32:
        raise InvalidArgument(f"image tensor must be float32, got {tensor.dtype}")
    if tensor.ndim != len(expected) or any(e != -1 and e != s for e, s in zip(expected, tensor.shape)):
        raise InvalidArgument(
            f"image tensor shape {list(tensor.shape)} does not match the model input {list(expected)} (no batch axis)"
        )
    if not np.isfinite(tensor).all():
        raise InvalidArgument("image tensor contains NaN or Inf values")
    return tensor
