"""Python client for convserve: the typed vision API (`VisionClient`) and V2 tensors (`InferenceClient`)."""

from service.client.connection import RetryPolicy, TlsConfig
from service.client.errors import DeadlineExceeded, NotFound, RpcFailed, Unavailable
from service.client.images import Frame
from service.client.tracking import CountLine, CountZone, TrackOptions, TrackUpdate
from service.client.reconnect import ReconnectingStream, ReconnectPolicy, StreamInterruption
from service.client.v2_client import InferenceClient, InferResult, ModelMetadata
from service.client.vision_client import VisionClient

__all__ = [
    "CountLine",
    "CountZone",
    "DeadlineExceeded",
    "Frame",
    "InferResult",
    "InferenceClient",
    "ModelMetadata",
    "NotFound",
    "ReconnectPolicy",
    "ReconnectingStream",
    "RetryPolicy",
    "RpcFailed",
    "StreamInterruption",
    "TlsConfig",
    "TrackOptions",
    "TrackUpdate",
    "Unavailable",
    "VisionClient",
]
