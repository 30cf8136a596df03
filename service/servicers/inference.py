"""The Open Inference Protocol (KServe V2) servicer: what tritonclient and perf_analyzer speak.

Thin by design: protobuf in, numpy to the data plane, protobuf out. Tensor inputs go straight to
the model's batcher; a BYTES input holding encoded images runs the model's server-side
preprocessing first. The `classification` output parameter returns top-k "score:index:label"
strings the way Triton does (scores are the model's raw output values).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from service import __version__
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.dataplane import DataPlane, ImageInput, RequestContext
from service.errors import InvalidArgument, NotFound, ServiceError, Unavailable, status_of
from service.models import LoadedVersion
from service.postprocess.classify import top_k
from service.servicers.calls import CallRunner
from service.servicers.lifecycle import Lifecycle
from service.servicers import v2_model_info as info
from service.servicers.v2_tensors import append_output, parameters_to_python, request_inputs

_STREAM_END = object()  # ModelStreamInfer: the client finished writing (or its side failed)
EXTENSIONS = ("classification", "model_repository", "model_configuration", "statistics", "binary_tensor_data", "parameters")
_NUMPY = {name: np.dtype(kind) for name, kind in (  # dtype objects: comparing to a dtype is cheaper than to a type
    ("float32", np.float32), ("float16", np.float16), ("float64", np.float64), ("int8", np.int8), ("uint8", np.uint8),
    ("int16", np.int16), ("int32", np.int32), ("int64", np.int64), ("bool", np.bool_))}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, calls: CallRunner, lifecycle: Lifecycle, repository_api: bool = True):
        self.dp = dataplane
        self.calls = calls
        self.lifecycle = lifecycle
        self.registry = dataplane.registry
        self.repository_api = repository_api
        self._last_inference_ms: dict[str, int] = {}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.lifecycle.serving and self.registry.all_ready())

    async def ModelReady(self, request, context):
        try:
            self.registry.get(request.name, request.version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.lifecycle.serving)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="convserve", version=__version__, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request, context):
        return await self.calls.unary("ModelMetadata", request.name, context,
                                      lambda ctx: self.metadata(ctx, request.name, request.version))

    async def ModelConfig(self, request, context):
        return await self.calls.unary("ModelConfig", request.name, context,
                                      lambda ctx: self.config(ctx, request.name, request.version))

    async def ModelStatistics(self, request, context):
        return await self.calls.unary("ModelStatistics", request.name, context,
                                      lambda ctx: self.statistics(ctx, request.name, request.version))

    async def RepositoryIndex(self, request, context):
        return info.repository_index(self.registry.entries, request.ready)

    async def RepositoryModelLoad(self, request, context):
        return await self.calls.unary("RepositoryModelLoad", request.model_name, context,
                                      lambda ctx: self.load(request.model_name))

    async def RepositoryModelUnload(self, request, context):
        return await self.calls.unary("RepositoryModelUnload", request.model_name, context,
                                      lambda ctx: self.unload(request.model_name))

    # The bodies below are plain-valued so the HTTP front end (service/http/calls.py) runs the same ones.

    async def metadata(self, ctx: RequestContext, name: str, version: str) -> pb.ModelMetadataResponse:
        loaded = self.dp.model(ctx, name, version)
        return info.model_metadata(self.registry.entries[name], loaded)

    async def config(self, ctx: RequestContext, name: str, version: str) -> pb.ModelConfigResponse:
        return info.model_config(self.dp.model(ctx, name, version))

    async def statistics(self, ctx: RequestContext, name: str, version: str) -> pb.ModelStatisticsResponse:
        names = [name] if name else sorted(self.registry.entries)
        response = pb.ModelStatisticsResponse()
        for each in names:
            loaded = self.dp.model(ctx, each, version)
            stats = self.calls.metrics.model_statistics(each)
            response.model_stats.append(info.model_statistics(each, str(loaded.version), stats, self._last_inference_ms.get(each, 0)))
        return response

    async def load(self, name: str) -> pb.RepositoryModelLoadResponse:
        self._require_repository_api()
        # a model directory is a plain, visible child of the repository, as at startup
        if not name or name.startswith((".", "_")) or "/" in name or not (self.registry.repo / name).is_dir():
            raise NotFound(f"no model directory '{name}' in the repository")
        entry = await self.registry.load(name)
        if entry.state != "READY" or entry.reason:
            raise Unavailable(f"model '{name}' failed to load: {entry.reason}")
        return pb.RepositoryModelLoadResponse()

    async def unload(self, name: str) -> pb.RepositoryModelUnloadResponse:
        self._require_repository_api()
        await self.registry.unload(name)
        return pb.RepositoryModelUnloadResponse()

    def _require_repository_api(self) -> None:
        if not self.repository_api:
            raise Unavailable("the repository API (load/unload) is disabled on this server (--repository-api false)")

    async def ModelInfer(self, request, context):
        return await self.calls.unary("ModelInfer", request.model_name, context, lambda ctx: self.infer(ctx, request))

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests are answered in the order they came; a failed request yields an error_message and
        the stream goes on.

        Up to `stream_max_pending` requests of one stream run at the same time, so a client that
        writes frames without waiting for each answer gets them batched together; beyond that the
        server stops reading the stream (HTTP/2 flow control holds the client back), so memory stays
        bounded however fast it writes. The call holds one of `max_concurrent_streams` while it runs.
        """
        async with self.calls.stream_slot(context):
            in_order: asyncio.Queue = asyncio.Queue()
            window = asyncio.Semaphore(max(1, self.dp.limits.stream_max_pending))
            reader = asyncio.ensure_future(self._read_stream(request_iterator, context, in_order, window))
            try:
                while (answer := await in_order.get()) is not _STREAM_END:
                    try:
                        yield await answer
                    finally:
                        window.release()
                await reader  # the client's side of the stream failed: end the call with that error
            finally:
                reader.cancel()
                while not in_order.empty():
                    leftover = in_order.get_nowait()
                    if leftover is not _STREAM_END:
                        leftover.cancel()

    async def _read_stream(self, request_iterator, context, in_order: asyncio.Queue, window: asyncio.Semaphore) -> None:
        """Start each request of the stream as it arrives, once the stream's window has room."""
        try:
            async for request in request_iterator:
                await window.acquire()
                in_order.put_nowait(asyncio.ensure_future(self._stream_one(request, context)))
        finally:
            in_order.put_nowait(_STREAM_END)  # after a cancellation nobody reads it; harmless

    async def _stream_one(self, request: pb.ModelInferRequest, context) -> pb.ModelStreamInferResponse:
        ctx = self.calls.new_context("ModelStreamInfer", context)
        ctx.model = request.model_name
        try:
            with self.calls.inflight(request.model_name):
                response = await self.infer(ctx, request)
        except Exception as exc:
            code, message = status_of(exc)
            self.calls.finish(ctx, code, message, exc if not isinstance(exc, ServiceError) else None)
            return pb.ModelStreamInferResponse(error_message=message)
        self.calls.finish(ctx, grpc.StatusCode.OK, "")
        return pb.ModelStreamInferResponse(infer_response=response)

    async def infer(self, ctx: RequestContext, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        loaded = self.dp.model(ctx, request.model_name, request.model_version)
        started = time.perf_counter()
        inputs = await self._model_inputs(ctx, loaded, request_inputs(request))
        # V2 ModelStatistics' compute_input: everything that turns the request into model inputs (image
        # decoding included), recorded for every request, so its count equals compute_infer's as
        # perf_analyzer requires
        ctx.stages["preprocess"] = time.perf_counter() - started
        wanted = self._requested_outputs(loaded, request)
        outputs = await self.dp.execute(ctx, loaded, inputs, tuple(name for name, _ in wanted))
        started = time.perf_counter()
        response = pb.ModelInferResponse(model_name=loaded.name, model_version=str(loaded.version), id=request.id)
        for name, classes in wanted:
            value = outputs[name]
            append_output(response, name, classification_strings(loaded, value, classes) if classes else value)
        ctx.add_stage("postprocess", time.perf_counter() - started)
        self._last_inference_ms[loaded.name] = int(time.time() * 1000)
        return response

    async def _model_inputs(self, ctx: RequestContext, loaded: LoadedVersion, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the config; BYTES image inputs are preprocessed."""
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
                inputs[name] = await self._preprocess_bytes(ctx, loaded, name, array)
                continue
            expected = _NUMPY[spec.dtype]
            if array.dtype != expected:
                raise InvalidArgument(f"input '{name}' has datatype {info.V2_DATATYPES.get(array.dtype.name, array.dtype.name)}, model expects {info.V2_DATATYPES[spec.dtype]}")
            check_shape(name, array.shape, spec.dims)
            if self.dp.limits.v2_reject_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidArgument(f"input '{name}' contains NaN or Inf values (this server runs with --v2-reject-non-finite true)")
            inputs[name] = array
        batch_sizes = {a.shape[0] for a in inputs.values()}
        if len(batch_sizes) != 1:
            raise InvalidArgument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
        if batch_sizes.pop() > loaded.config.batching.max_batch_size:
            raise InvalidArgument(f"batch exceeds the model's max_batch_size {loaded.config.batching.max_batch_size}")
        return inputs

    async def _preprocess_bytes(self, ctx, loaded, name, array) -> np.ndarray:
        if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
            raise InvalidArgument(f"BYTES input '{name}' must have shape [N] or [N, 1] (one encoded image per batch item), got {list(array.shape)}")
        images = [ImageInput(encoded=bytes(item)) for item in array.reshape(-1)]
        prepared = await self.dp.prepare(ctx, loaded, images)
        shapes = {p.tensor.shape for p in prepared}
        if len(shapes) != 1:
            raise InvalidArgument(f"images of BYTES input '{name}' preprocess to different sizes {sorted(shapes)}; send them in separate requests")
        return np.stack([p.tensor for p in prepared])

    def _requested_outputs(self, loaded: LoadedVersion, request) -> list[tuple[str, int]]:
        """(output name, classification k or 0) pairs; every output when none is requested."""
        names = [spec.name for spec in loaded.config.outputs]
        if not request.outputs:
            return [(name, 0) for name in names]
        wanted, seen = [], set()
        for output in request.outputs:
            if output.name not in names:
                raise InvalidArgument(f"unknown output '{output.name}'; model '{loaded.name}' has {names}")
            if output.name in seen:
                raise InvalidArgument(f"output '{output.name}' is requested twice")
            seen.add(output.name)
            classes = parameters_to_python(output.parameters).get("classification", 0)
            if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
                raise InvalidArgument(f"output '{output.name}': classification must be a non-negative integer, got {classes!r}")
            wanted.append((output.name, classes))
        return wanted


def check_shape(name: str, shape: tuple, dims: tuple[int, ...]) -> None:
    if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims[1:], shape[1:])):
        raise InvalidArgument(f"input '{name}' has shape {list(shape)}, model expects {list(dims)} (-1: any size)")
    if shape[0] == 0:
        raise InvalidArgument(f"input '{name}' has an empty batch")


def classification_strings(loaded: LoadedVersion, values: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification extension: [N, k] BYTES "score:index:label", highest first."""
    flat = values.reshape(values.shape[0], -1).astype(np.float32)
    k = min(k, flat.shape[1])
    indices, scores = top_k(flat, k)
    labels = loaded.labels
    rows = [[f"{s:f}:{i}:{labels[i]}" if i < len(labels) else f"{s:f}:{i}" for i, s in zip(ri, rs)] for ri, rs in zip(indices, scores)]
    return np.array(rows, dtype=object).reshape(flat.shape[0], k)
