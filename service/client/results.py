"""Results of the vision API as small frozen dataclasses (no protobuf leaks to the caller).

Each unary call returns a `Reply` (which model and version answered, the request id, one result
per image in request order); streams yield one `FrameResult` per frame. `from_proto` functions
here are the only place that reads the response messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.client.tracking import TrackUpdate, track_update_from_proto

R = TypeVar("R")


@dataclass(frozen=True)
class Reply(Generic[R]):
    model_name: str
    model_version: str
    request_id: str
    results: tuple[R, ...]


@dataclass(frozen=True)
class Prediction:
    label: str
    class_index: int
    score: float


@dataclass(frozen=True, eq=False)
class ActivationMap:
    """Where the evidence for one class lies: raw [h, w] map and [H, W] map normalised to [0, 1]."""

    method: str
    class_index: int
    label: str
    score: float
    raw: np.ndarray
    upsampled: np.ndarray
    overlay: bytes = b""


@dataclass(frozen=True)
class Classification:
    predictions: tuple[Prediction, ...]
    activation_map: ActivationMap | None = None

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Detection:
    box: Box
    label: str
    class_index: int
    score: float
    track_id: int = 0  # a tracked stream's object identity; 0 untracked


@dataclass(frozen=True)
class Detections:
    """Objects in one image (highest score first), the image size, and the overlay if asked for."""

    detections: tuple[Detection, ...]
    image_width: int
    image_height: int
    overlay_jpeg: bytes = b""


@dataclass(frozen=True)
class ClassPixels:
    class_index: int
    label: str
    pixels: int
    fraction: float


@dataclass(frozen=True, eq=False)
class Segmentation:
    label_map_png: bytes
    width: int
    height: int
    classes: tuple[ClassPixels, ...]
    overlay_png: bytes = b""
    probabilities: np.ndarray | None = None

    def label_map(self) -> np.ndarray:
        """The [H, W] class-index map (uint8, or uint16 with more than 256 classes)."""
        return cv2.imdecode(np.frombuffer(self.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)


@dataclass(frozen=True)
class FrameError:
    code: int
    message: str


@dataclass(frozen=True)
class FrameResult(Generic[R]):
    """One stream frame's outcome: exactly one of result / error, or neither when dropped."""

    frame_id: int
    capture_timestamp_us: int
    model_name: str
    model_version: str
    result: R | None
    error: FrameError | None
    dropped: bool
    frames_dropped: int
    server_processing_us: int
    tracking: TrackUpdate | None = None  # set on every result of a tracked StreamDetect


def tensor_from_proto(message: vpb.Tensor) -> np.ndarray:
    dtype = np.dtype(message.dtype or "float32").newbyteorder("<")
    return np.frombuffer(message.data, dtype=dtype).reshape(tuple(message.shape)).astype(dtype.newbyteorder("="))


def activation_map_from_proto(message: vpb.ActivationMap) -> ActivationMap:
    return ActivationMap(
        message.method,
        message.class_index,
        message.label,
        message.score,
        tensor_from_proto(message.raw),
        tensor_from_proto(message.upsampled),
        message.overlay,
    )


def classification_from_proto(message: vpb.ClassifyResult) -> Classification:
    predictions = tuple(Prediction(p.label, p.class_index, p.score) for p in message.predictions)
    cam = activation_map_from_proto(message.activation_map) if message.HasField("activation_map") else None
    return Classification(predictions, cam)


def detections_from_proto(message: vpb.DetectResult) -> Detections:
    detections = tuple(
        Detection(Box(d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.label, d.class_index, d.score, d.track_id)
        for d in message.detections
    )
    return Detections(detections, message.image_width, message.image_height, message.overlay_jpeg)


def segmentation_from_proto(message: vpb.SegmentResult) -> Segmentation:
    classes = tuple(ClassPixels(c.class_index, c.label, c.pixels, c.fraction) for c in message.classes)
    probabilities = tensor_from_proto(message.probabilities) if message.HasField("probabilities") else None
    return Segmentation(
        message.label_map_png, message.width, message.height, classes, message.overlay_png, probabilities
    )


def reply_from_proto(response, request_id: str, results) -> Reply:
    return Reply(response.model_name, response.model_version, request_id, tuple(results))


def frame_result_from_proto(message, convert) -> FrameResult:
    """A DetectFrameResult / ClassifyFrameResult; `convert` turns its `result` into a dataclass."""
    outcome = message.WhichOneof("outcome")
    result = convert(message.result) if outcome == "result" else None
    error = FrameError(message.error.code, message.error.message) if outcome == "error" else None
    return FrameResult(
        message.frame_id,
        message.capture_timestamp_us,
        message.model_name,
        message.model_version,
        result,
        error,
        message.dropped,
        message.frames_dropped,
        message.server_processing_us,
        _tracking(message),
    )


def _tracking(message) -> TrackUpdate | None:
    """A tracked StreamDetect result's update; None untracked (and for StreamClassify, which has none)."""
    tracked = "tracking" in message.DESCRIPTOR.fields_by_name and message.HasField("tracking")
    return track_update_from_proto(message.tracking) if tracked else None
