"""protobuf <-> plain types for the vision API (to_proto / from_proto, nothing else)."""

from __future__ import annotations

import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.dtypes import VISION_DTYPES
from service.errors import InvalidArgument
from service.request_checks import check_class_filter_length
from service.servicers.v2_tensors import element_count
from service.pipelines.classify import Classification
from service.pipelines.detect import DetectionResult, DetectOptions
from service.pipelines.explain import ActivationMapResult, ExplainOptions
from service.pipelines.request import ImageInput, ModelRef
from service.pipelines.segment import SegmentationResult


def tensor_from_proto(message: vpb.Tensor, what: str) -> np.ndarray:
    if message.dtype not in VISION_DTYPES:
        raise InvalidArgument(f"{what}: dtype must be one of {VISION_DTYPES}, got {message.dtype!r}")
    shape = tuple(message.shape)
    count = element_count(shape, what)  # negative, over 64 axes or beyond numpy (np.prod in int64 wrapped to 0)
    dtype = np.dtype(message.dtype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(message.data) != expected:
        raise InvalidArgument(
            f"{what}: {len(message.data)} data bytes, shape {list(shape)} of {message.dtype} needs {expected}"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def tensor_to_proto(array: np.ndarray) -> vpb.Tensor:
    array = np.ascontiguousarray(array)
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return vpb.Tensor(shape=list(array.shape), dtype=array.dtype.name, data=data)


def image_from_proto(message: vpb.Image, index: int) -> ImageInput:
    source = message.WhichOneof("source")
    if source == "encoded":
        return ImageInput(encoded=message.encoded)
    if source == "tensor":
        return ImageInput(tensor=tensor_from_proto(message.tensor, f"images[{index}].tensor"))
    raise InvalidArgument(f"images[{index}] has neither encoded bytes nor a tensor")


def images_from_proto(messages) -> list[ImageInput]:
    return [image_from_proto(m, i) for i, m in enumerate(messages)]


def classify_result_to_proto(
    result: Classification, activation_map: ActivationMapResult | None = None
) -> vpb.ClassifyResult:
    message = vpb.ClassifyResult(
        predictions=[
            vpb.ClassPrediction(label=p.label, class_index=p.class_index, score=p.score) for p in result.predictions
        ]
    )
    if activation_map is not None:
        message.activation_map.CopyFrom(activation_map_to_proto(activation_map))
    return message


def model_from_proto(message: vpb.ModelRef) -> ModelRef:
    return ModelRef(message.name, message.version)


def explain_options_from_proto(options: vpb.ExplainOptions) -> ExplainOptions:
    """Plain ExplainOptions (an empty format is JPEG); the explain pipeline checks them."""
    class_index = options.class_index if options.HasField("class_index") else None
    return ExplainOptions(
        class_index=class_index, overlay=options.overlay, overlay_format=options.overlay_format or "jpeg"
    )


def activation_map_to_proto(result: ActivationMapResult) -> vpb.ActivationMap:
    return vpb.ActivationMap(
        method=result.method,
        class_index=result.class_index,
        label=result.label,
        score=result.score,
        raw=tensor_to_proto(result.raw.astype(np.float32)),
        upsampled=tensor_to_proto(result.upsampled.astype(np.float32)),
        overlay=result.overlay,
    )


def detect_options_from_proto(params: vpb.DetectParams) -> DetectOptions:
    """Plain DetectOptions (unset optional fields are None: the model's defaults); the detect pipeline checks them."""

    def optional(name):
        return getattr(params, name) if params.HasField(name) else None

    check_class_filter_length(len(params.class_filter))  # before the list is copied
    return DetectOptions(
        score_threshold=optional("score_threshold"),
        iou_threshold=optional("iou_threshold"),
        max_detections=optional("max_detections"),
        class_filter=tuple(params.class_filter),
        class_agnostic=params.class_agnostic,
        draw_overlay=params.draw_overlay,
    )


def detect_result_to_proto(result: DetectionResult) -> vpb.DetectResult:
    return vpb.DetectResult(
        detections=[
            vpb.Detection(
                box=vpb.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
                label=d.label,
                class_index=d.class_index,
                score=d.score,
            )
            for d in result.detections
        ],
        image_width=result.image_width,
        image_height=result.image_height,
        overlay_jpeg=result.overlay_jpeg,
    )


def segment_result_to_proto(result: SegmentationResult) -> vpb.SegmentResult:
    message = vpb.SegmentResult(
        label_map_png=result.label_map_png,
        width=result.width,
        height=result.height,
        overlay_png=result.overlay_png,
        classes=[
            vpb.ClassPixels(class_index=c.class_index, label=c.label, pixels=c.pixels, fraction=c.fraction)
            for c in result.classes
        ],
    )
    if result.probabilities is not None:
        message.probabilities.CopyFrom(tensor_to_proto(result.probabilities.astype(np.float32, copy=False)))
    return message
