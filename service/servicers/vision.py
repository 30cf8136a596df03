"""The typed vision API servicer (convserve.v1.VisionService): answers for apps, not tensors.

Each method converts protobuf to plain types (vision_convert.py), awaits one pipeline of
service/pipelines/ and converts the plain result back; the streams run through streams.py.
"""

from __future__ import annotations

import time

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.errors import InvalidArgument, ServiceError, Unavailable, status_of
from service.pipelines.classify import classify
from service.pipelines.core import Stages
from service.pipelines.detect import detect
from service.pipelines.explain import classify_and_explain, explain
from service.pipelines.segment import segment
from service.servicers import vision_convert as convert
from service.servicers.calls import CallRunner
from service.servicers.streams import OrderedStream, StreamPolicy, run_frame
from service.servicers.track_convert import stream_tracking_from_proto, track_result


class VisionServicer(vpb_grpc.VisionServiceServicer):
    def __init__(self, stages: Stages, calls: CallRunner):
        self.stages = stages
        self.calls = calls

    async def Classify(self, request, context):
        async def body(ctx):
            model, images = convert.model_from_proto(request.model), convert.images_from_proto(request.images)
            if request.explain:
                options = convert.explain_options_from_proto(request.explain_options)
                results, maps = await classify_and_explain(self.stages, ctx, model, images, request.top_k, options)
            else:
                results = await classify(self.stages, ctx, model, images, request.top_k)
                maps = [None] * len(results)
            return vpb.ClassifyResponse(
                model_name=ctx.model,
                model_version=ctx.version,
                results=[convert.classify_result_to_proto(r, m) for r, m in zip(results, maps)],
            )

        return await self.calls.unary("Classify", request.model.name, context, body)

    async def Explain(self, request, context):
        async def body(ctx):
            options = convert.explain_options_from_proto(request.options)
            maps = await explain(
                self.stages,
                ctx,
                convert.model_from_proto(request.model),
                convert.images_from_proto(request.images),
                options,
            )
            return vpb.ExplainResponse(
                model_name=ctx.model, model_version=ctx.version, maps=[convert.activation_map_to_proto(m) for m in maps]
            )

        return await self.calls.unary("Explain", request.model.name, context, body)

    async def Detect(self, request, context):
        async def body(ctx):
            options = convert.detect_options_from_proto(request.params)
            results = await detect(
                self.stages,
                ctx,
                convert.model_from_proto(request.model),
                convert.images_from_proto(request.images),
                options,
            )
            return vpb.DetectResponse(
                model_name=ctx.model,
                model_version=ctx.version,
                results=[convert.detect_result_to_proto(r) for r in results],
            )

        return await self.calls.unary("Detect", request.model.name, context, body)

    async def Segment(self, request, context):
        async def body(ctx):
            results = await segment(
                self.stages,
                ctx,
                convert.model_from_proto(request.model),
                convert.images_from_proto(request.images),
                request.overlay,
                request.probabilities,
            )
            return vpb.SegmentResponse(
                model_name=ctx.model,
                model_version=ctx.version,
                results=[convert.segment_result_to_proto(r) for r in results],
            )

        return await self.calls.unary("Segment", request.model.name, context, body)

    async def StreamDetect(self, request_iterator, context):
        async def answer(ctx, model, frame):
            options = convert.detect_options_from_proto(frame.params)
            (result,) = await detect(self.stages, ctx, model, [convert.image_from_proto(frame.image, 0)], options)
            return vpb.DetectFrameResult(result=convert.detect_result_to_proto(result))

        def follow(first_frame, model):
            """Tracking asked for on the first frame: every result, in order, goes through the stream's tracker."""
            tracking = stream_tracking_from_proto(first_frame)
            return None if tracking is None else (lambda result: track_result(tracking, result, model.labels))

        async for result in self._stream(
            "StreamDetect", "detection", request_iterator, context, answer, vpb.DetectFrameResult, follow
        ):
            yield result

    async def StreamClassify(self, request_iterator, context):
        async def answer(ctx, model, frame):
            (result,) = await classify(self.stages, ctx, model, [convert.image_from_proto(frame.image, 0)], frame.top_k)
            return vpb.ClassifyFrameResult(result=convert.classify_result_to_proto(result))

        async for result in self._stream(
            "StreamClassify", "classification", request_iterator, context, answer, vpb.ClassifyFrameResult
        ):
            yield result

    async def _stream(self, method, task, request_iterator, context, answer, result_type, follow=None):
        """Shared stream handling: model from the first frame, per-frame errors, ordering, dropping;
        the call holds one of `max_concurrent_streams` (shared with ModelStreamInfer) while it runs.
        `follow(first_frame, model)` may return a function that sees every result in frame order
        (dropped ones included) before it is sent: per-stream state such as tracking."""
        async with self.calls.stream_slot(context):
            frames = self._stream_frames(method, task, request_iterator, context, answer, result_type, follow)
            async for result in frames:
                yield result

    async def _stream_frames(self, method, task, request_iterator, context, answer, result_type, follow):
        state: dict = {"follow": None}

        def policy_of_first(frame) -> StreamPolicy:
            ctx = self.calls.new_context(method, context)
            state["model"] = self.stages.resolve(ctx, convert.model_from_proto(frame.model), task=task)
            state["ref"] = (frame.model.name, frame.model.version)
            options = frame.options
            if options.max_pending < 0:
                raise InvalidArgument(f"options.max_pending must be >= 0, got {options.max_pending}")
            # The server's setting is both the default and the ceiling: one stream cannot hold unbounded frames.
            limit = self.stages.limits.stream_max_pending
            state["follow"] = follow(frame, state["model"]) if follow is not None else None
            return StreamPolicy(options.drop_frames, min(options.max_pending or limit, limit))

        async def process(frame):
            received = time.perf_counter()
            model = state["model"]
            ctx = self.calls.frame_context(method, context, model)

            async def work():
                if frame.HasField("model") and (frame.model.name, frame.model.version) != state["ref"]:
                    raise InvalidArgument("a stream serves one model: this frame names another model or version")
                return await answer(ctx, model, frame)

            result, failure = await run_frame(self.calls, ctx, model.name, work)
            if isinstance(failure, Unavailable):  # model unloading / server shutting down: end the stream,
                raise failure  # so the client reconnects instead of collecting errors
            if failure is not None:
                code, message = status_of(failure)
                result = result_type(error=vpb.FrameError(code=code.value[0], message=message))
            result.frame_id, result.capture_timestamp_us = frame.frame_id, frame.capture_timestamp_us
            result.model_name, result.model_version = model.name, str(model.version)
            result.server_processing_us = int((time.perf_counter() - received) * 1e6)
            result.frames_dropped = stream.dropped
            return result

        def on_dropped(frame, dropped_so_far):
            model = state["model"]
            self.calls.metrics.stream_frames_dropped.labels(model.name).inc()
            return result_type(
                frame_id=frame.frame_id,
                capture_timestamp_us=frame.capture_timestamp_us,
                model_name=model.name,
                model_version=str(model.version),
                dropped=True,
                frames_dropped=dropped_so_far,
            )

        stream = OrderedStream(request_iterator, process, on_dropped, policy_of_first)
        try:
            async for result in stream.results():
                if state["follow"] is not None:  # in frame order, on the loop: well under a millisecond a frame
                    state["follow"](result)
                yield result
        except ServiceError as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
