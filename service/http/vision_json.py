"""The vision API over HTTP: query parameters -> option dataclasses, typed results -> JSON.

The body of a vision call is one encoded image (JPEG, PNG, ...); options are query parameters,
checked here for their type only (the tasks validate ranges, as for gRPC). An unknown parameter
is refused rather than ignored, so a typo cannot silently fall back to a default. Images in the
answer (overlays, label maps) are base64 strings, ready for a `data:` URL.
"""

from __future__ import annotations

import base64
from typing import Callable, Mapping

from service.errors import InvalidArgument
from service.http.calls import (
    ActivationMapResult,
    Answer,
    Classification,
    DetectionResult,
    DetectOptions,
    ExplainOptions,
    SegmentationResult,
)

QUERY_PARAMETERS = {
    "classify": ("top_k", "explain"),
    "detect": ("score_threshold", "iou_threshold", "max_detections", "classes", "class_agnostic", "overlay"),
    "segment": ("overlay",),
    "explain": ("class_index", "overlay"),
}


def check_query(call: str, query: Mapping[str, str]) -> None:
    allowed = QUERY_PARAMETERS[call]
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unknown query parameter(s) {unknown}"[:200] + f"; {call} takes {list(allowed)}")


def _typed(query: Mapping[str, str], key: str, parse: Callable[[str], object], kind: str):
    text = query.get(key)
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError:
        raise InvalidArgument(f"query parameter {key} must be {kind}, got {text[:40]!r}") from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def query_int(query, key):
    return _typed(query, key, int, "an integer")


def query_float(query, key):
    return _typed(query, key, float, "a number")


def query_bool(query, key) -> bool:
    return bool(_typed(query, key, _bool, "true or false"))


def detect_options(query: Mapping[str, str]) -> DetectOptions:
    classes = _typed(
        query, "classes", lambda t: tuple(int(c) for c in t.split(",") if c.strip()), "a comma list of integers"
    )
    return DetectOptions(
        score_threshold=query_float(query, "score_threshold"),
        iou_threshold=query_float(query, "iou_threshold"),
        max_detections=query_int(query, "max_detections"),
        class_filter=classes or (),
        class_agnostic=query_bool(query, "class_agnostic"),
        draw_overlay=query_bool(query, "overlay"),
    )


def explain_options(query: Mapping[str, str], overlay_default: bool) -> ExplainOptions:
    overlay = query_bool(query, "overlay") if "overlay" in query else overlay_default
    return ExplainOptions(class_index=query_int(query, "class_index"), overlay=overlay, overlay_format="jpeg")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else ""


def _model(answer: Answer) -> dict:
    return {"model_name": answer.model_name, "model_version": answer.model_version}


def activation_map_json(result: ActivationMapResult) -> dict:
    height, width = result.upsampled.shape
    return {
        "method": result.method,
        "class_index": result.class_index,
        "label": result.label,
        "score": result.score,
        "width": width,
        "height": height,
        "overlay_jpeg": _b64(result.overlay),
    }


def classify_json(answer: Answer) -> dict:
    result: Classification
    result, activation_map = answer.value
    document = {
        **_model(answer),
        "predictions": [{"label": p.label, "class_index": p.class_index, "score": p.score} for p in result.predictions],
    }
    if activation_map is not None:
        document["activation_map"] = activation_map_json(activation_map)
    return document


def detect_json(answer: Answer) -> dict:
    result: DetectionResult = answer.value
    return {
        **_model(answer),
        "image_width": result.image_width,
        "image_height": result.image_height,
        "detections": [
            {"box": list(d.box), "label": d.label, "class_index": d.class_index, "score": d.score}
            for d in result.detections
        ],
        "overlay_jpeg": _b64(result.overlay_jpeg),
    }


def segment_json(answer: Answer) -> dict:
    result: SegmentationResult = answer.value
    return {
        **_model(answer),
        "width": result.width,
        "height": result.height,
        "classes": [
            {"class_index": c.class_index, "label": c.label, "pixels": c.pixels, "fraction": c.fraction}
            for c in result.classes
        ],
        "label_map_png": _b64(result.label_map_png),
        "overlay_png": _b64(result.overlay_png),
    }


def explain_json(answer: Answer) -> dict:
    return {**_model(answer), "activation_map": activation_map_json(answer.value)}
