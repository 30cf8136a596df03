"""The typed vision API servicer (convserve.v1.VisionService): answers for apps, not tensors."""

from __future__ import annotations

import asyncio
import time

import grpc

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.dataplane import DataPlane
from service.errors import InvalidArgument, ResourceExhausted, ServiceError, Unavailable, status_of
from service.servicers import vision_convert as convert
from service.servicers.calls import CallRunner
from service.servicers.streams import OrderedStream, StreamPolicy
from service.tasks.classification import classify
from service.tasks.detection import detect
from service.tasks.segmentation import segment
from service.tasks.explanation import explain, explain_classifications


class VisionServicer(vpb_grpc.VisionServiceServicer):
    def __init__(self, dataplane: DataPlane, calls: CallRunner):
        self.dp = dataplane
        self.calls = calls

    async def Classify(self, request, context):
        async def body(ctx):
            model = self.dp.model(ctx, request.model.name, request.model.version, task="classification")
            images = convert.images_from_proto(request.images)
            options = convert.explain_options_from_proto(request.explain_options) if request.explain else None
            results = await classify(self.dp, ctx, model, images, request.top_k, keep_original=request.explain)
            maps = await explain_classifications(self.dp, ctx, model, results, options) if options else [None] * len(results)
            return vpb.ClassifyResponse(model_name=model.name, model_version=str(model.version),
                                        results=[convert.classify_result_to_proto(r, m) for r, m in zip(results, maps)])
        return await self.calls.unary("Classify", request.model.name, context, body)

    async def Explain(self, request, context):
        async def body(ctx):
            model = self.dp.model(ctx, request.model.name, request.model.version, task="classification")
            options = convert.explain_options_from_proto(request.options)
            maps = await explain(self.dp, ctx, model, convert.images_from_proto(request.images), options)
            return vpb.ExplainResponse(model_name=model.name, model_version=str(model.version),
                                       maps=[convert.activation_map_to_proto(m) for m in maps])
        return await self.calls.unary("Explain", request.model.name, context, body)

    async def Detect(self, request, context):
        async def body(ctx):
            model = self.dp.model(ctx, request.model.name, request.model.version, task="detection")
            options = convert.detect_options_from_proto(request.params)
            results = await detect(self.dp, ctx, model, convert.images_from_proto(request.images), options)
            return vpb.DetectResponse(model_name=model.name, model_version=str(model.version),
                                      results=[convert.detect_result_to_proto(r) for r in results])
        return await self.calls.unary("Detect", request.model.name, context, body)

    async def Segment(self, request, context):
        async def body(ctx):
            model = self.dp.model(ctx, request.model.name, request.model.version, task="segmentation")
            images = convert.images_from_proto(request.images)
            results = await segment(self.dp, ctx, model, images, request.overlay, request.probabilities)
            return vpb.SegmentResponse(model_name=model.name, model_version=str(model.version),
                                       results=[convert.segment_result_to_proto(r) for r in results])
        return await self.calls.unary("Segment", request.model.name, context, body)

    async def StreamDetect(self, request_iterator, context):
        async def answer(ctx, model, frame):
            options = convert.detect_options_from_proto(frame.params)
            images = [convert.image_from_proto(frame.image, 0)]
            (result,) = await detect(self.dp, ctx, model, images, options)
            return vpb.DetectFrameResult(result=convert.detect_result_to_proto(result))

        async for result in self._stream("StreamDetect", "detection", request_iterator, context, answer, vpb.DetectFrameResult):
            yield result

    async def StreamClassify(self, request_iterator, context):
        async def answer(ctx, model, frame):
            images = [convert.image_from_proto(frame.image, 0)]
            (result,) = await classify(self.dp, ctx, model, images, frame.top_k)
            return vpb.ClassifyFrameResult(result=convert.classify_result_to_proto(result))

        async for result in self._stream("StreamClassify", "classification", request_iterator, context, answer, vpb.ClassifyFrameResult):
            yield result

    async def _stream(self, method, task, request_iterator, context, answer, result_type):
        """Shared stream handling: model from the first frame, per-frame errors, ordering, dropping;
        the call holds one of `max_concurrent_streams` (shared with ModelStreamInfer) while it runs."""
        async with self.calls.stream_slot(context) as slot:
            async for result in self._stream_frames(method, task, slot.frames(request_iterator), context, answer, result_type):
                yield result

    async def _stream_frames(self, method, task, request_iterator, context, answer, result_type):
        state: dict = {}

        def policy_of_first(frame) -> StreamPolicy:
            ctx = self.calls.new_context(method, context)
            state["model"] = self.dp.model(ctx, frame.model.name, frame.model.version, task=task)
            state["ref"] = (frame.model.name, frame.model.version)
            options = frame.options
            if options.max_pending < 0:
                raise InvalidArgument(f"options.max_pending must be >= 0, got {options.max_pending}")
            # The server's setting is both the default and the ceiling: one stream cannot hold unbounded frames.
            limit = self.dp.limits.stream_max_pending
            return StreamPolicy(options.drop_frames, min(options.max_pending or limit, limit))

        async def process(frame):
            received = time.perf_counter()
            model = state["model"]
            ctx = self.calls.frame_context(method, context, model)
            try:
                if frame.HasField("model") and (frame.model.name, frame.model.version) != state["ref"]:
                    raise InvalidArgument("a stream serves one model: this frame names another model or version")
                with self.calls.inflight(model.name):
                    result = await answer(ctx, model, frame)
                self.calls.finish(ctx, grpc.StatusCode.OK, "")
            except Exception as exc:  # a frame's failure, expected or not, is that frame's FrameError
                code, message = status_of(exc)
                self.calls.finish(ctx, code, message, exc if not isinstance(exc, ServiceError) else None)
                if isinstance(exc, Unavailable):  # model unloading / server shutting down: end the stream,
                    raise                         # so the client reconnects instead of collecting errors
                result = result_type(error=vpb.FrameError(code=code.value[0], message=message))
            result.frame_id, result.capture_timestamp_us = frame.frame_id, frame.capture_timestamp_us
            result.model_name, result.model_version = model.name, str(model.version)
            result.server_processing_us = int((time.perf_counter() - received) * 1e6)
            result.frames_dropped = stream.dropped
            return result

        def on_dropped(frame, dropped_so_far):
            model = state["model"]
            self.calls.metrics.stream_frames_dropped.labels(model.name).inc()
            return result_type(frame_id=frame.frame_id, capture_timestamp_us=frame.capture_timestamp_us,
                               model_name=model.name, model_version=str(model.version),
                               dropped=True, frames_dropped=dropped_so_far)

        stream = OrderedStream(request_iterator, process, on_dropped, policy_of_first)
        try:
            async for result in stream.results():
                yield result
        except ServiceError as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
