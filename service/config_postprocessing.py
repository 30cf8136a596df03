"""What a model's answer output means, per task: the `postprocessing` section of config.yaml.

A module of its own so that service/config.py stays one screenful per concern; service.config
re-exports every class here, and docs/model-config.md documents each field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CamConfig(_Frozen):
    """Where class activation maps come from (see docs/cam.md)."""

    method: Literal["cam", "score_cam"] = "cam"
    features_output: str | None = None  # last conv feature maps [N, K, h, w] (method "cam")
    weights_initializer: str | None = None  # ONNX initializer holding the classifier weights [C, K]
    max_maps: int = Field(default=32, ge=1)  # score_cam: activation maps (forward passes) per request


DETECTION_LAYOUTS = ("yolo_grid", "yolov5", "yolov8", "yolox", "decoded", "decoded_split")
DECODED_LAYOUTS = ("decoded", "decoded_split")  # NMS ran in the graph: ours is skipped


class DetectionConfig(_Frozen):
    """How a detector's raw output is read (service/postprocess/detect.py documents each layout)."""

    layout: Literal[DETECTION_LAYOUTS] = "yolo_grid"  # type: ignore[valid-type]
    grid: int | None = Field(default=None, ge=1)  # yolo_grid: S
    boxes_per_cell: int | None = Field(default=None, ge=1)  # yolo_grid: B
    strides: tuple[int, ...] = Field(default=(8, 16, 32), min_length=1)  # yolox: one per head level
    # yolox and decoded: "logits" applies a sigmoid to objectness / class scores (or the row score)
    scores: Literal["probabilities", "logits"] = "probabilities"
    box_format: Literal["xyxy", "cxcywh"] = "xyxy"  # decoded, decoded_split: input pixels
    boxes_output: str | None = None  # decoded_split: [N, K, 4]
    scores_output: str | None = None  # decoded_split: [N, K]
    labels_output: str | None = None  # decoded_split: [N, K] class indices
    score_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _layout_fields(self) -> "DetectionConfig":
        if self.layout == "yolo_grid" and (self.grid is None or self.boxes_per_cell is None):
            raise ValueError("layout yolo_grid needs grid (S) and boxes_per_cell (B)")
        if any(stride < 1 for stride in self.strides):
            raise ValueError(f"strides must be positive, got {list(self.strides)}")
        split = (self.boxes_output, self.scores_output, self.labels_output)
        if self.layout == "decoded_split" and None in split:
            raise ValueError("layout decoded_split needs boxes_output, scores_output and labels_output")
        if self.layout != "decoded_split" and split != (None, None, None):
            raise ValueError("boxes_output, scores_output and labels_output only apply to layout decoded_split")
        return self

    @property
    def split_outputs(self) -> tuple[str, str, str]:
        """decoded_split: the names of the boxes, scores and labels outputs."""
        return (self.boxes_output, self.scores_output, self.labels_output)


class SegmentationConfig(_Frozen):
    """One-channel maps [N, 1, H, W] (a foreground probability or logit, e.g. text detectors): the
    label map is 1 where the score is above `threshold`, else 0. `activation` has no default: a
    sigmoid applied to what already is a probability would mark almost every pixel foreground."""

    activation: Literal["sigmoid", "none"]  # sigmoid: the output is a logit; none: already a probability
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)  # on the probability


class PostprocessingConfig(_Frozen):
    output: str | None = None  # the output that carries the answer; default: the first output
    scores: Literal["logits", "probabilities"] = "logits"  # classification: softmax applied if logits
    top_k: int = Field(default=5, ge=1)
    cam: CamConfig | None = None
    detection: DetectionConfig | None = None
    segmentation: SegmentationConfig | None = None  # only for one-channel segmentation outputs
