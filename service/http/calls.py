"""Every call the HTTP front end makes into the request path, and nothing else.

The HTTP handlers see only this module: plain values in (names, numpy arrays, option dataclasses),
plain values or the shared V2 info messages out. It runs the same code the gRPC servicers run:
the V2 servicer's plain-valued bodies (metadata, config, statistics, load, unload, infer) and the
vision task functions, so both protocols validate, batch and answer identically.
"""

from __future__ import annotations

from dataclasses import dataclass

from service import __version__
from service.api.inference import grpc_service_pb2 as pb
from service.dataplane import DataPlane, ImageInput, RequestContext
from service.errors import NotFound, Unavailable
from service.http.v2_json import InferRequest
from service.servicers import v2_model_info as info
from service.servicers.inference import EXTENSIONS, InferenceServicer
from service.servicers.lifecycle import Lifecycle
from service.servicers.v2_tensors import append_input, parameter_from_python, response_outputs
from service.tasks.classification import Classification, classify
from service.tasks.detection import DetectionResult, DetectOptions, detect
from service.tasks.explanation import ActivationMapResult, ExplainOptions, explain, explain_classifications
from service.tasks.segmentation import SegmentationResult, segment


@dataclass(frozen=True)
class Answer:
    """What a call produced and which model version produced it."""

    model_name: str
    model_version: str
    value: object


class RequestPath:
    def __init__(self, dataplane: DataPlane, v2: InferenceServicer, lifecycle: Lifecycle):
        self.dp = dataplane
        self.v2 = v2
        self.lifecycle = lifecycle
        self.registry = dataplane.registry

    # -- health and metadata --------------------------------------------------------------------

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

    def model_names(self) -> list[str]:
        return sorted(self.registry.entries)

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

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, ctx: RequestContext, name: str, version: str, request: InferRequest) -> Answer:
        """Raw V2 tensors in, {output name: array} out (classification outputs as BYTES)."""
        message = pb.ModelInferRequest(model_name=name, model_version=version, id=request.id)
        for input_name, array in request.inputs:
            append_input(message, input_name, array)
        for output in request.outputs:
            wanted = message.outputs.add(name=output.name)
            for key, value in output.parameters.items():
                wanted.parameters[key].CopyFrom(parameter_from_python(value))
        response = await self.v2.infer(ctx, message)
        return Answer(response.model_name, response.model_version, response_outputs(response))

    async def classify(self, ctx: RequestContext, name: str, version: str, image: bytes, top_k: int,
                       explain_options: ExplainOptions | None) -> Answer:
        """(Classification, ActivationMapResult or None) of one encoded image."""
        model = self.dp.model(ctx, name, version, task="classification")
        results = await classify(self.dp, ctx, model, [ImageInput(encoded=image)], top_k,
                                 keep_original=explain_options is not None)
        maps = [None]
        if explain_options is not None:
            maps = await explain_classifications(self.dp, ctx, model, results, explain_options)
        return Answer(model.name, str(model.version), (results[0], maps[0]))

    async def detect(self, ctx: RequestContext, name: str, version: str, image: bytes, options: DetectOptions) -> Answer:
        model = self.dp.model(ctx, name, version, task="detection")
        (result,) = await detect(self.dp, ctx, model, [ImageInput(encoded=image)], options)
        return Answer(model.name, str(model.version), result)

    async def segment(self, ctx: RequestContext, name: str, version: str, image: bytes, overlay: bool) -> Answer:
        model = self.dp.model(ctx, name, version, task="segmentation")
        (result,) = await segment(self.dp, ctx, model, [ImageInput(encoded=image)], overlay, False)
        return Answer(model.name, str(model.version), result)

    async def explain(self, ctx: RequestContext, name: str, version: str, image: bytes, options: ExplainOptions) -> Answer:
        model = self.dp.model(ctx, name, version, task="classification")
        (result,) = await explain(self.dp, ctx, model, [ImageInput(encoded=image)], options)
        return Answer(model.name, str(model.version), result)


# The plain option and result types of the vision calls, for the JSON converters (one import site).
__all__ = ["ActivationMapResult", "Answer", "Classification", "DetectOptions", "DetectionResult", "ExplainOptions",
           "RequestPath", "SegmentationResult"]
