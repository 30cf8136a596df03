from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images", "top_k", "explain", "explain_options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    explain: bool
    explain_options: ExplainOptions
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., explain: _Optional[bool] = ..., explain_options: _Optional[_Union[ExplainOptions, _Mapping]] = ...) -> None: ...

class ClassPrediction(_message.Message):
    __slots__ = ("label", "class_index", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    class_index: int
    score: float
    def __init__(self, label: _Optional[str] = ..., class_index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResult(_message.Message):
    __slots__ = ("predictions", "activation_map")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_MAP_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[ClassPrediction]
    activation_map: ActivationMap
    def __init__(self, predictions: _Optional[_Iterable[_Union[ClassPrediction, _Mapping]]] = ..., activation_map: _Optional[_Union[ActivationMap, _Mapping]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResult]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ClassifyResult, _Mapping]]] = ...) -> None: ...

class DetectParams(_message.Message):
    __slots__ = ("score_threshold", "iou_threshold", "max_detections", "class_filter", "class_agnostic", "draw_overlay")
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASS_FILTER_FIELD_NUMBER: _ClassVar[int]
    CLASS_AGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    DRAW_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    score_threshold: float
    iou_threshold: float
    max_detections: int
    class_filter: _containers.RepeatedScalarFieldContainer[int]
    class_agnostic: bool
    draw_overlay: bool
    def __init__(self, score_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ..., class_filter: _Optional[_Iterable[int]] = ..., class_agnostic: _Optional[bool] = ..., draw_overlay: _Optional[bool] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("model", "images", "params")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    params: DetectParams
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., params: _Optional[_Union[DetectParams, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "label", "class_index", "score", "track_id")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label: str
    class_index: int
    score: float
    track_id: int
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[str] = ..., class_index: _Optional[int] = ..., score: _Optional[float] = ..., track_id: _Optional[int] = ...) -> None: ...

class DetectResult(_message.Message):
    __slots__ = ("detections", "image_width", "image_height", "overlay_jpeg")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_JPEG_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    image_width: int
    image_height: int
    overlay_jpeg: bytes
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., overlay_jpeg: _Optional[bytes] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    results: _containers.RepeatedCompositeFieldContainer[DetectResult]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[DetectResult, _Mapping]]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("model", "images", "overlay", "probabilities")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    overlay: bool
    probabilities: bool
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., overlay: _Optional[bool] = ..., probabilities: _Optional[bool] = ...) -> None: ...

class ClassPixels(_message.Message):
    __slots__ = ("class_index", "label", "pixels", "fraction")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    pixels: int
    fraction: float
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., pixels: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class SegmentResult(_message.Message):
    __slots__ = ("label_map_png", "width", "height", "classes", "overlay_png", "probabilities")
    LABEL_MAP_PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label_map_png: bytes
    width: int
    height: int
    classes: _containers.RepeatedCompositeFieldContainer[ClassPixels]
    overlay_png: bytes
    probabilities: Tensor
    def __init__(self, label_map_png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[ClassPixels, _Mapping]]] = ..., overlay_png: _Optional[bytes] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    results: _containers.RepeatedCompositeFieldContainer[SegmentResult]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[SegmentResult, _Mapping]]] = ...) -> None: ...

class ExplainOptions(_message.Message):
    __slots__ = ("class_index", "overlay", "overlay_format")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    overlay: bool
    overlay_format: str
    def __init__(self, class_index: _Optional[int] = ..., overlay: _Optional[bool] = ..., overlay_format: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "images", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    options: ExplainOptions
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., options: _Optional[_Union[ExplainOptions, _Mapping]] = ...) -> None: ...

class ActivationMap(_message.Message):
    __slots__ = ("method", "class_index", "label", "score", "raw", "upsampled", "overlay")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    UPSAMPLED_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    method: str
    class_index: int
    label: str
    score: float
    raw: Tensor
    upsampled: Tensor
    overlay: bytes
    def __init__(self, method: _Optional[str] = ..., class_index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., raw: _Optional[_Union[Tensor, _Mapping]] = ..., upsampled: _Optional[_Union[Tensor, _Mapping]] = ..., overlay: _Optional[bytes] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "maps")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    maps: _containers.RepeatedCompositeFieldContainer[ActivationMap]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., maps: _Optional[_Iterable[_Union[ActivationMap, _Mapping]]] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("drop_frames", "max_pending")
    DROP_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_FIELD_NUMBER: _ClassVar[int]
    drop_frames: bool
    max_pending: int
    def __init__(self, drop_frames: _Optional[bool] = ..., max_pending: _Optional[int] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DetectFrame(_message.Message):
    __slots__ = ("model", "frame_id", "capture_timestamp_us", "image", "params", "options", "track")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    frame_id: int
    capture_timestamp_us: int
    image: Image
    params: DetectParams
    options: StreamOptions
    track: TrackOptions
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., frame_id: _Optional[int] = ..., capture_timestamp_us: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., params: _Optional[_Union[DetectParams, _Mapping]] = ..., options: _Optional[_Union[StreamOptions, _Mapping]] = ..., track: _Optional[_Union[TrackOptions, _Mapping]] = ...) -> None: ...

class TrackOptions(_message.Message):
    __slots__ = ("tracker", "high_score_threshold", "low_score_threshold", "match_iou_threshold", "min_hits", "max_age", "max_tracks", "frame_interval_us", "lines", "zones")
    TRACKER_FIELD_NUMBER: _ClassVar[int]
    HIGH_SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LOW_SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MATCH_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_HITS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRACKS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INTERVAL_US_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    tracker: str
    high_score_threshold: float
    low_score_threshold: float
    match_iou_threshold: float
    min_hits: int
    max_age: int
    max_tracks: int
    frame_interval_us: int
    lines: _containers.RepeatedCompositeFieldContainer[CountLine]
    zones: _containers.RepeatedCompositeFieldContainer[CountZone]
    def __init__(self, tracker: _Optional[str] = ..., high_score_threshold: _Optional[float] = ..., low_score_threshold: _Optional[float] = ..., match_iou_threshold: _Optional[float] = ..., min_hits: _Optional[int] = ..., max_age: _Optional[int] = ..., max_tracks: _Optional[int] = ..., frame_interval_us: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[CountLine, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[CountZone, _Mapping]]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class CountLine(_message.Message):
    __slots__ = ("name", "start", "end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: Point
    end: Point
    def __init__(self, name: _Optional[str] = ..., start: _Optional[_Union[Point, _Mapping]] = ..., end: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class CountZone(_message.Message):
    __slots__ = ("name", "polygon")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLYGON_FIELD_NUMBER: _ClassVar[int]
    name: str
    polygon: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, name: _Optional[str] = ..., polygon: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class TrackEvent(_message.Message):
    __slots__ = ("track_id", "class_index", "label", "first_frame_id", "last_frame_id", "first_timestamp_us", "last_timestamp_us")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    class_index: int
    label: str
    first_frame_id: int
    last_frame_id: int
    first_timestamp_us: int
    last_timestamp_us: int
    def __init__(self, track_id: _Optional[int] = ..., class_index: _Optional[int] = ..., label: _Optional[str] = ..., first_frame_id: _Optional[int] = ..., last_frame_id: _Optional[int] = ..., first_timestamp_us: _Optional[int] = ..., last_timestamp_us: _Optional[int] = ...) -> None: ...

class ClassTrackCount(_message.Message):
    __slots__ = ("class_index", "label", "unique", "active")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    unique: int
    active: int
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., unique: _Optional[int] = ..., active: _Optional[int] = ...) -> None: ...

class LineClassCount(_message.Message):
    __slots__ = ("class_index", "label", "crossed_in", "crossed_out")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CROSSED_IN_FIELD_NUMBER: _ClassVar[int]
    CROSSED_OUT_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    crossed_in: int
    crossed_out: int
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., crossed_in: _Optional[int] = ..., crossed_out: _Optional[int] = ...) -> None: ...

class LineCount(_message.Message):
    __slots__ = ("name", "classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedCompositeFieldContainer[LineClassCount]
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[LineClassCount, _Mapping]]] = ...) -> None: ...

class ZoneClassCount(_message.Message):
    __slots__ = ("class_index", "label", "entered", "exited", "inside")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ENTERED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    INSIDE_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    entered: int
    exited: int
    inside: int
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., entered: _Optional[int] = ..., exited: _Optional[int] = ..., inside: _Optional[int] = ...) -> None: ...

class ZoneCount(_message.Message):
    __slots__ = ("name", "classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedCompositeFieldContainer[ZoneClassCount]
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ZoneClassCount, _Mapping]]] = ...) -> None: ...

class TrackCounts(_message.Message):
    __slots__ = ("tracks", "lines", "zones")
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    tracks: _containers.RepeatedCompositeFieldContainer[ClassTrackCount]
    lines: _containers.RepeatedCompositeFieldContainer[LineCount]
    zones: _containers.RepeatedCompositeFieldContainer[ZoneCount]
    def __init__(self, tracks: _Optional[_Iterable[_Union[ClassTrackCount, _Mapping]]] = ..., lines: _Optional[_Iterable[_Union[LineCount, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[ZoneCount, _Mapping]]] = ...) -> None: ...

class TrackUpdate(_message.Message):
    __slots__ = ("confirmed", "ended", "counts")
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    confirmed: _containers.RepeatedCompositeFieldContainer[TrackEvent]
    ended: _containers.RepeatedCompositeFieldContainer[TrackEvent]
    counts: TrackCounts
    def __init__(self, confirmed: _Optional[_Iterable[_Union[TrackEvent, _Mapping]]] = ..., ended: _Optional[_Iterable[_Union[TrackEvent, _Mapping]]] = ..., counts: _Optional[_Union[TrackCounts, _Mapping]] = ...) -> None: ...

class DetectFrameResult(_message.Message):
    __slots__ = ("frame_id", "capture_timestamp_us", "model_name", "model_version", "result", "error", "server_processing_us", "frames_dropped", "dropped", "tracking")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVER_PROCESSING_US_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    capture_timestamp_us: int
    model_name: str
    model_version: str
    result: DetectResult
    error: FrameError
    server_processing_us: int
    frames_dropped: int
    dropped: bool
    tracking: TrackUpdate
    def __init__(self, frame_id: _Optional[int] = ..., capture_timestamp_us: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., result: _Optional[_Union[DetectResult, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., server_processing_us: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., dropped: _Optional[bool] = ..., tracking: _Optional[_Union[TrackUpdate, _Mapping]] = ...) -> None: ...

class ClassifyFrame(_message.Message):
    __slots__ = ("model", "frame_id", "capture_timestamp_us", "image", "top_k", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    frame_id: int
    capture_timestamp_us: int
    image: Image
    top_k: int
    options: StreamOptions
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., frame_id: _Optional[int] = ..., capture_timestamp_us: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ..., options: _Optional[_Union[StreamOptions, _Mapping]] = ...) -> None: ...

class ClassifyFrameResult(_message.Message):
    __slots__ = ("frame_id", "capture_timestamp_us", "model_name", "model_version", "result", "error", "server_processing_us", "frames_dropped", "dropped")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVER_PROCESSING_US_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    capture_timestamp_us: int
    model_name: str
    model_version: str
    result: ClassifyResult
    error: FrameError
    server_processing_us: int
    frames_dropped: int
    dropped: bool
    def __init__(self, frame_id: _Optional[int] = ..., capture_timestamp_us: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., result: _Optional[_Union[ClassifyResult, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., server_processing_us: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., dropped: _Optional[bool] = ...) -> None: ...
