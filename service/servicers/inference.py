"""The Open Inference Protocol (KServe V2) servicer: what tritonclient and perf_analyzer speak.

Thin by design: protobuf in (v2_tensors.py), the infer pipeline (service/pipelines/infer.py) for
ModelInfer and ModelStreamInfer, protobuf out; model metadata, config and statistics messages are
built in v2_model_info.py.
"""

from __future__ import annotations

import time

from service import __version__
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.errors import NotFound, Unavailable, Unimplemented, status_of
from service.pipelines.core import Stages
from service.pipelines.infer import OutputRequest, infer
from service.pipelines.request import ModelRef, RequestContext
from service.servicers import v2_model_info as info
from service.repository import find_model_directory
from service.servicers.calls import CallRunner
from service.servicers.infer_wire import InferRequestWire
from service.servicers.lifecycle import Lifecycle
from service.servicers.streams import OrderedStream, StreamPolicy, run_frame
from service.servicers.v2_parameters import parameters_to_python
from service.shared_memory import SharedMemoryRegistry
from service.shared_memory_tensors import SharedMemoryBinding

EXTENSIONS = (
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "parameters",
    "system_shared_memory",
)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        stages: Stages,
        calls: CallRunner,
        lifecycle: Lifecycle,
        repository_api: bool = True,
        *,
        shared_memory: SharedMemoryRegistry,
    ):
        self.stages = stages
        self.shared_memory = shared_memory
        self.calls = calls
        self.lifecycle = lifecycle
        self.registry = stages.registry
        self.repository_api = repository_api
        self._last_inference_ms: dict[tuple[str, str], int] = {}

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
        return await self.calls.unary(
            "ModelMetadata", request.name, context, lambda ctx: self.metadata(ctx, request.name, request.version)
        )

    async def ModelConfig(self, request, context):
        return await self.calls.unary(
            "ModelConfig", request.name, context, lambda ctx: self.config(ctx, request.name, request.version)
        )

    async def ModelStatistics(self, request, context):
        return await self.calls.unary(
            "ModelStatistics", request.name, context, lambda ctx: self.statistics(ctx, request.name, request.version)
        )

    async def RepositoryIndex(self, request, context):
        return info.repository_index(self.registry.entries, request.ready)

    async def RepositoryModelLoad(self, request, context):
        return await self.calls.unary(
            "RepositoryModelLoad", request.model_name, context, lambda ctx: self.load(request.model_name)
        )

    async def RepositoryModelUnload(self, request, context):
        return await self.calls.unary(
            "RepositoryModelUnload", request.model_name, context, lambda ctx: self.unload(request.model_name)
        )

    # Plain-valued bodies, shared with the HTTP front end (service/http/calls.py).

    async def metadata(self, ctx: RequestContext, name: str, version: str) -> pb.ModelMetadataResponse:
        loaded = self.stages.resolve(ctx, ModelRef(name, version))
        return info.model_metadata(self.registry.entries[name], loaded)

    async def config(self, ctx: RequestContext, name: str, version: str) -> pb.ModelConfigResponse:
        return info.model_config(self.stages.resolve(ctx, ModelRef(name, version)))

    async def statistics(self, ctx: RequestContext, name: str, version: str) -> pb.ModelStatisticsResponse:
        """The named version's own statistics (an empty version: the one requests without a version
        get); an empty name: every model's."""
        names = [name] if name else sorted(self.registry.entries)
        response = pb.ModelStatisticsResponse()
        for each in names:
            chosen = str(self.stages.resolve(ctx, ModelRef(each, version)).version)
            stats = self.calls.metrics.model_statistics(each, chosen)
            last_ms = self._last_inference_ms.get((each, chosen), 0)
            response.model_stats.append(info.model_statistics(each, chosen, stats, last_ms))
        return response

    async def load(self, name: str) -> pb.RepositoryModelLoadResponse:
        self._require_repository_api()
        find_model_directory(self.registry.repo, name)  # INVALID_ARGUMENT / NOT_FOUND, no path
        entry = await self.registry.load(name)
        if entry.state != "READY" or entry.reason:
            raise Unavailable(f"model '{name}' failed to load: {entry.reason}")
        return pb.RepositoryModelLoadResponse()

    async def unload(self, name: str) -> pb.RepositoryModelUnloadResponse:
        self._require_repository_api()
        await self.registry.unload(name)
        return pb.RepositoryModelUnloadResponse()

    def inference_done(self, model_name: str, version: int) -> None:
        """ModelStatistics' last_inference of the version that answered, for either front end."""
        self._last_inference_ms[(model_name, str(version))] = int(time.time() * 1000)

    def _require_repository_api(self) -> None:
        if not self.repository_api:
            raise Unavailable("the repository API (load/unload) is disabled on this server (--repository-api false)")

    async def SystemSharedMemoryStatus(self, request, context):
        async def body(ctx):
            response = pb.SystemSharedMemoryStatusResponse()
            for region in self.shared_memory.status(request.name):
                response.regions[region.name].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(
                        name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                    )
                )
            return response

        return await self.calls.unary("SystemSharedMemoryStatus", "", context, body)

    async def SystemSharedMemoryRegister(self, request, context):
        async def body(ctx):
            self.shared_memory.register_system(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await self.calls.unary("SystemSharedMemoryRegister", "", context, body)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def body(ctx):
            self.shared_memory.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self.calls.unary("SystemSharedMemoryUnregister", "", context, body)

    async def CudaSharedMemoryStatus(self, request, context):
        async def body(ctx):  # no CUDA region can be registered on this build: an empty list, or the name refused
            self.shared_memory.status(request.name, kind="cuda")
            return pb.CudaSharedMemoryStatusResponse()

        return await self.calls.unary("CudaSharedMemoryStatus", "", context, body)

    async def CudaSharedMemoryRegister(self, request, context):
        async def body(ctx):
            raise Unimplemented(
                "CUDA shared memory needs a GPU build; this server offers system shared memory "
                "(SystemSharedMemoryRegister)"
            )

        return await self.calls.unary("CudaSharedMemoryRegister", "", context, body)

    async def CudaSharedMemoryUnregister(self, request, context):
        async def body(ctx):
            self.shared_memory.unregister(request.name, kind="cuda")
            return pb.CudaSharedMemoryUnregisterResponse()

        return await self.calls.unary("CudaSharedMemoryUnregister", "", context, body)

    async def ModelInfer(self, request: InferRequestWire, context):
        """`request` arrives split from its wire bytes (the server registers split_infer_request as
        this method's deserializer), its tensor bytes still where gRPC put them."""
        message, raw = request.message, request.raw_input_contents
        return await self.calls.unary(
            "ModelInfer", message.model_name, context, lambda ctx: self._infer(ctx, message, raw)
        )

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests are answered in the order they came; a failed request yields an error_message and
        the stream goes on.

        Up to `stream_max_pending` requests of one stream run at the same time, so a client that
        writes frames without waiting for each answer gets them batched together; beyond that the
        server stops reading the stream (HTTP/2 flow control holds the client back), so memory stays
        bounded however fast it writes. The call holds one of `max_concurrent_streams` while it runs.
        """
        window = max(1, self.stages.limits.stream_max_pending)
        policy = StreamPolicy(drop_frames=False, max_pending=window, max_unconsumed=window)

        async def process(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            ctx = self.calls.new_context("ModelStreamInfer", context)
            ctx.model = request.model_name
            response, failure = await run_frame(self.calls, ctx, request.model_name, lambda: self._infer(ctx, request))
            if failure is not None:
                return pb.ModelStreamInferResponse(error_message=status_of(failure)[1])
            return pb.ModelStreamInferResponse(infer_response=response)

        async with self.calls.stream_slot(context):
            async for answer in OrderedStream(request_iterator, process, None, lambda _: policy).results():
                yield answer

    async def _infer(
        self, ctx: RequestContext, request: pb.ModelInferRequest, raw_contents: list[memoryview] | None = None
    ) -> pb.ModelInferResponse:
        outputs = [
            OutputRequest(o.name, parameters_to_python(o.parameters).get("classification", 0)) for o in request.outputs
        ]
        # arrays, from raw contents or shared memory; BYTES inputs bounded by the images-per-request limit
        tensors = SharedMemoryBinding(
            request, self.shared_memory, self.stages.limits.max_images_per_request, raw_contents
        )
        result = await infer(
            self.stages, ctx, ModelRef(request.model_name, request.model_version), tensors.inputs, outputs
        )
        loaded = result.model
        response = pb.ModelInferResponse(model_name=loaded.name, model_version=str(loaded.version), id=request.id)
        for name, value in result.outputs:
            tensors.append_output(response, name, value)
        if tensors.used:
            self.shared_memory.served(loaded.name)
        self.inference_done(loaded.name, loaded.version)
        return response
