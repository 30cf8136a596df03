"""Every call the HTTP front end makes into the request path, and nothing else.

The HTTP handlers see only this module: plain values in (names, numpy arrays, option dataclasses),
plain values or the shared V2 info messages out. It awaits the same pipelines the gRPC servicers
await (service/pipelines/) and the V2 servicer's plain-valued bodies for metadata, config,
statistics, load and unload, so both protocols validate, batch and answer identically.
"""

from __future__ import annotations

from dataclasses import dataclass

from service import __version__
from service.api.inference import grpc_service_pb2 as pb
from service.errors import NotFound, Unavailable
from service.http.v2_json import InferRequest
from service.pipelines.classify import Classification, classify
from service.pipelines.core import Stages
from service.pipelines.detect import DetectionResult, DetectOptions, detect
from service.pipelines.explain import ActivationMapResult, ExplainOptions, classify_and_explain, explain
from service.pipelines.infer import OutputRequest, infer
from service.pipelines.request import ImageInput, ModelRef, RequestContext
from service.pipelines.segment import SegmentationResult, segment
from service.servicers import v2_model_info as info
from service.servicers.inference import EXTENSIONS, InferenceServicer
from service.servicers.lifecycle import Lifecycle
from service.servicers.v2_parameters import parameter_from_python
from service.servicers.v2_tensors import append_input
from service.shared_memory import RegionStatus, SharedMemoryRegistry
from service.shared_memory_tensors import SharedMemoryBinding


@dataclass(frozen=True)
class Answer:
    """What a call produced and which model version produced it."""

    model_name: str
    model_version: str
    value: object


class RequestPath:
    def __init__(
        self, stages: Stages, v2: InferenceServicer, shared_memory: SharedMemoryRegistry, lifecycle: Lifecycle
    ):
        self.stages = stages
        self.v2 = v2
        self.shared_memory = shared_memory
        self.lifecycle = lifecycle
        self.registry = stages.registry

    # -- health, metadata, repository -----------------------------------------------------------

    def server_ready(self) -> bool:
        return self.lifecycle.serving and self.registry.all_ready()

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.registry.get(name, version)
        except (NotFound, Unavailable):
            return False
        return self.lifecycle.serving

    def server_metadata(self) -> dict:
        return {"name": "convserve", "version": __version__, "extensions": list(EXTENSIONS)}

    async def model_metadata(self, ctx: RequestContext, name: str, version: str) -> pb.ModelMetadataResponse:
        return await self.v2.metadata(ctx, name, version)

    async def model_config(self, ctx: RequestContext, name: str, version: str) -> pb.ModelConfigResponse:
        return await self.v2.config(ctx, name, version)

    async def model_statistics(self, ctx: RequestContext, name: str, version: str) -> pb.ModelStatisticsResponse:
        return await self.v2.statistics(ctx, name, version)

    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        return info.repository_index(self.registry.entries, ready_only)

    async def load(self, name: str) -> None:
        await self.v2.load(name)

    async def unload(self, name: str) -> None:
        await self.v2.unload(name)

    # -- system shared memory (Triton's extension; the regions are shared with gRPC) -----------

    def shared_memory_status(self, name: str) -> list[RegionStatus]:
        return self.shared_memory.status(name)

    def shared_memory_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register_system(name, key, offset, byte_size)

    def shared_memory_unregister(self, name: str) -> None:
        self.shared_memory.unregister(name)

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, ctx: RequestContext, name: str, version: str, request: InferRequest) -> Answer:
        """Raw V2 tensors in, ([(output name, array)], names written to shared memory) out
        (classification outputs as BYTES)."""
        outputs = [OutputRequest(o.name, o.parameters.get("classification", 0)) for o in request.outputs]
        binding = self._shared_memory_binding(request) if request.uses_shared_memory else None
        arrays = binding.inputs if binding is not None else request.inputs
        result = await infer(self.stages, ctx, ModelRef(name, version), arrays, outputs)
        written = frozenset()
        if binding is not None:
            scratch = pb.ModelInferResponse()  # the binding writes regions; HTTP describes them itself
            for output_name, value in result.outputs:
                if output_name in binding.outputs:
                    binding.append_output(scratch, output_name, value)
            written = frozenset(binding.outputs)
            if binding.used:
                self.shared_memory.served(result.model.name)
        self.v2.inference_done(result.model.name, result.model.version)
        return Answer(result.model.name, str(result.model.version), (result.outputs, written))

    def _shared_memory_binding(self, request: InferRequest) -> SharedMemoryBinding:
        """The gRPC path's binding, given the request's tensor descriptions: one set of rules for
        where shared-memory tensors live and how their sizes and bounds are checked."""
        message = pb.ModelInferRequest()
        for input_name, array in request.inputs.items():
            append_input(message, input_name, array)
        for shared in request.shared_inputs:
            tensor = message.inputs.add(name=shared.name, datatype=shared.datatype, shape=shared.shape)
            _copy_parameters(tensor.parameters, shared.parameters)
        for output in request.outputs:
            _copy_parameters(message.outputs.add(name=output.name).parameters, output.parameters)
        return SharedMemoryBinding(message, self.shared_memory, self.stages.limits.max_images_per_request)

    async def classify(
        self,
        ctx: RequestContext,
        name: str,
        version: str,
        image: bytes,
        top_k: int,
        explain_options: ExplainOptions | None,
    ) -> Answer:
        """(Classification, ActivationMapResult or None) of one encoded image."""
        images = [ImageInput(encoded=image)]
        if explain_options is None:
            results, maps = await classify(self.stages, ctx, ModelRef(name, version), images, top_k), [None]
        else:
            results, maps = await classify_and_explain(
                self.stages, ctx, ModelRef(name, version), images, top_k, explain_options
            )
        return Answer(ctx.model, ctx.version, (results[0], maps[0]))

    async def detect(
        self, ctx: RequestContext, name: str, version: str, image: bytes, options: DetectOptions
    ) -> Answer:
        (result,) = await detect(self.stages, ctx, ModelRef(name, version), [ImageInput(encoded=image)], options)
        return Answer(ctx.model, ctx.version, result)

    async def segment(self, ctx: RequestContext, name: str, version: str, image: bytes, overlay: bool) -> Answer:
        (result,) = await segment(
            self.stages, ctx, ModelRef(name, version), [ImageInput(encoded=image)], overlay, False
        )
        return Answer(ctx.model, ctx.version, result)

    async def explain(
        self, ctx: RequestContext, name: str, version: str, image: bytes, options: ExplainOptions
    ) -> Answer:
        (result,) = await explain(self.stages, ctx, ModelRef(name, version), [ImageInput(encoded=image)], options)
        return Answer(ctx.model, ctx.version, result)


def _copy_parameters(target, parameters: dict) -> None:
    for key, value in parameters.items():
        target[key].CopyFrom(parameter_from_python(value))


# The plain option and result types of the vision calls, for the JSON converters (one import site).
__all__ = [
    "ActivationMapResult",
    "Answer",
    "Classification",
    "DetectOptions",
    "DetectionResult",
    "ExplainOptions",
    "RequestPath",
    "SegmentationResult",
]
