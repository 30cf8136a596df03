"""Typed Python client for the vision API (convserve.v1.VisionService).

    with VisionClient("localhost:8001") as client:
        reply = client.classify(["digit.png"], "lenet5", top_k=3)
        print(reply.results[0].top.label, reply.request_id)

Every unary call has one deadline (`timeout`, retries included), retries UNAVAILABLE with
exponential backoff and jitter (see connection.py), sends `x-request-id` (one per call, or the
caller's) and a bearer token when given, and raises `RpcFailed` subclasses on failure. Several
servers behind one name: pass a `dns:///host:port` or `ipv4:a:p1,b:p2` target with
`load_balancing="round_robin"` to spread calls over every address.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.client import results as res
from service.client.connection import DEFAULT_MAX_MESSAGE_BYTES, Connection, RetryPolicy, TlsConfig
from service.client.images import Frame, ImageLike, image_to_proto, images_to_proto
from service.client.tracking import TrackOptions


class VisionClient:
    def __init__(
        self,
        host: str,
        *,
        timeout: float | None = 10.0,
        retries: int = 3,
        backoff: tuple[float, float] = (0.1, 2.0),
        tls: TlsConfig | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        load_balancing: str | None = None,
        retry_resource_exhausted: bool = False,
    ):
        policy = RetryPolicy(retries, backoff[0], backoff[1], retry_resource_exhausted)
        self.connection = Connection(
            host,
            timeout=timeout,
            policy=policy,
            tls=tls,
            token=token,
            max_message_bytes=max_message_bytes,
            load_balancing=load_balancing,
        )
        self._stub = vpb_grpc.VisionServiceStub(self.connection.channel)
        self._health = health_pb2_grpc.HealthStub(self.connection.channel)

    def __enter__(self) -> "VisionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def classify(
        self,
        images,
        model: str,
        version: str = "",
        top_k: int = 0,
        explain: bool = False,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> res.Reply[res.Classification]:
        request = vpb.ClassifyRequest(
            model=vpb.ModelRef(name=model, version=version),
            images=images_to_proto(images),
            top_k=top_k,
            explain=explain,
        )
        response, rid = self.connection.unary("Classify", self._stub.Classify, request, timeout, request_id)
        return res.reply_from_proto(response, rid, map(res.classification_from_proto, response.results))

    def detect(
        self,
        images,
        model: str,
        *,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        class_filter: Iterable[int] = (),
        class_agnostic: bool = False,
        draw_overlay: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> res.Reply[res.Detections]:
        params = detect_params(
            score_threshold, iou_threshold, max_detections, class_filter, class_agnostic, draw_overlay
        )
        request = vpb.DetectRequest(
            model=vpb.ModelRef(name=model, version=version), images=images_to_proto(images), params=params
        )
        response, rid = self.connection.unary("Detect", self._stub.Detect, request, timeout, request_id)
        return res.reply_from_proto(response, rid, map(res.detections_from_proto, response.results))

    def segment(
        self,
        images,
        model: str,
        overlay: bool = False,
        probabilities: bool = False,
        *,
        version: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> res.Reply[res.Segmentation]:
        request = vpb.SegmentRequest(
            model=vpb.ModelRef(name=model, version=version),
            images=images_to_proto(images),
            overlay=overlay,
            probabilities=probabilities,
        )
        response, rid = self.connection.unary("Segment", self._stub.Segment, request, timeout, request_id)
        return res.reply_from_proto(response, rid, map(res.segmentation_from_proto, response.results))

    def explain(
        self,
        images,
        model: str,
        class_index: int | None = None,
        overlay: bool = False,
        overlay_format: str = "jpeg",
        *,
        version: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> res.Reply[res.ActivationMap]:
        options = vpb.ExplainOptions(overlay=overlay, overlay_format=overlay_format)
        if class_index is not None:
            options.class_index = class_index
        request = vpb.ExplainRequest(
            model=vpb.ModelRef(name=model, version=version), images=images_to_proto(images), options=options
        )
        response, rid = self.connection.unary("Explain", self._stub.Explain, request, timeout, request_id)
        return res.reply_from_proto(response, rid, map(res.activation_map_from_proto, response.maps))

    def stream_detect(
        self,
        frames: Iterable[ImageLike | Frame],
        model: str,
        *,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        class_filter: Iterable[int] = (),
        class_agnostic: bool = False,
        drop_frames: bool = False,
        max_pending: int = 0,
        track: TrackOptions | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[res.FrameResult[res.Detections]]:
        """Detection on a frame stream: yields one FrameResult per frame, in frame order.

        Frames are read lazily from `frames` (a camera generator works); each is an image or a
        `Frame` with its own id and capture time. `timeout` (default: none) bounds the whole stream.
        With `track` the server tracks objects across frames: detections carry `track_id` and each
        result a `tracking` update (tracks confirmed and ended, cumulative counts).
        """
        params = detect_params(score_threshold, iou_threshold, max_detections, class_filter, class_agnostic, False)

        def message(index: int, frame: Frame, first: bool) -> vpb.DetectFrame:
            out = vpb.DetectFrame(frame_id=index, image=image_to_proto(frame.image), params=params)
            if first:
                out.model.CopyFrom(vpb.ModelRef(name=model, version=version))
                out.options.CopyFrom(vpb.StreamOptions(drop_frames=drop_frames, max_pending=max_pending))
                if track is not None:
                    out.track.CopyFrom(track.to_proto())
            return out

        requests = _frame_messages(frames, message)
        return self.connection.stream(
            "StreamDetect",
            self._stub.StreamDetect,
            requests,
            lambda m: res.frame_result_from_proto(m, res.detections_from_proto),
            timeout,
            request_id,
        )

    def stream_classify(
        self,
        frames: Iterable[ImageLike | Frame],
        model: str,
        *,
        version: str = "",
        top_k: int = 0,
        drop_frames: bool = False,
        max_pending: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[res.FrameResult[res.Classification]]:
        """Classification on a frame stream, with the same semantics as `stream_detect`."""

        def message(index: int, frame: Frame, first: bool) -> vpb.ClassifyFrame:
            out = vpb.ClassifyFrame(frame_id=index, image=image_to_proto(frame.image), top_k=top_k)
            if first:
                out.model.CopyFrom(vpb.ModelRef(name=model, version=version))
                out.options.CopyFrom(vpb.StreamOptions(drop_frames=drop_frames, max_pending=max_pending))
            return out

        requests = _frame_messages(frames, message)
        return self.connection.stream(
            "StreamClassify",
            self._stub.StreamClassify,
            requests,
            lambda m: res.frame_result_from_proto(m, res.classification_from_proto),
            timeout,
            request_id,
        )

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's health status name: "SERVING", "NOT_SERVING", ... (retries like any call)."""
        request = health_pb2.HealthCheckRequest(service=service)
        response, _ = self.connection.unary("Health/Check", self._health.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def detect_params(
    score_threshold, iou_threshold, max_detections, class_filter, class_agnostic, draw_overlay
) -> vpb.DetectParams:
    """DetectParams with only the given optional fields set (unset ones take the model's defaults)."""
    params = vpb.DetectParams(class_filter=list(class_filter), class_agnostic=class_agnostic, draw_overlay=draw_overlay)
    if score_threshold is not None:
        params.score_threshold = score_threshold
    if iou_threshold is not None:
        params.iou_threshold = iou_threshold
    if max_detections is not None:
        params.max_detections = max_detections
    return params


def _frame_messages(frames: Iterable, build) -> Iterator:
    """Frame messages from images or Frames: ids are positions from 0, capture time is now unless given."""
    for position, item in enumerate(frames):
        frame = item if isinstance(item, Frame) else Frame(item)
        frame_id = position if frame.frame_id is None else frame.frame_id
        message = build(frame_id, frame, position == 0)
        message.capture_timestamp_us = (
            frame.capture_timestamp_us if frame.capture_timestamp_us is not None else time.time_ns() // 1000
        )
        yield message
