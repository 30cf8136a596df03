"""A compact one-stage grid detector in the style of YOLO v1, and its training loss.

The input is split into an S x S grid; every cell predicts B boxes (x, y, w, h, confidence) and one
set of C class probabilities, shared by its boxes. The exported graph applies the activations, so
its output is already probabilities, in the layout service/postprocess/detect.py decodes as
"yolo_grid":

    output [N, S, S, B*5 + C]; cell (row i, column j):
      box b -> channels 5b .. 5b+4 = x, y, w, h, confidence
        x, y in [0, 1]: the box centre's offset inside the cell, cx = (j + x) / S * input_width
        w, h >= 0: the box size as a fraction of the input width / height
        confidence in [0, 1]: P(object) x IoU(box, object), trained against the achieved IoU
      channels 5B .. 5B+C-1 = class probabilities (softmax), P(class | object in this cell)

One refinement over v1, documented here so the layout above stays exact: each of the B box slots
has a size prior (`anchors`, fractions of the input side); w = anchor * (2 sigmoid(t))^2 (the
YOLOv5 parameterisation, bounded by 4 x anchor) and an object is assigned to the slot whose prior
is closest to its size. This makes slots specialise (small / large) and assignment stable. The
decoder never needs the anchors: they are baked into the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou, complete_box_iou_loss

from export.models.registry import InputSpec, register_model
from service.config import DetectionConfig, PostprocessingConfig, PreprocessingConfig

INPUT_SIZE = 128
# Letterbox to a square input; grey (114) padding as in the YOLO family.
YOLO_PREPROCESSING = PreprocessingConfig(
    color_order="rgb",
    resize="letterbox",
    size=(INPUT_SIZE, INPUT_SIZE),
    pad_value=114.0,
    scale=1.0 / 255.0,
)


@dataclass(frozen=True)
class GridSpec:
    """Geometry of the head: grid S, boxes per cell B, classes C, input size, box size priors."""

    grid: int = 8
    boxes_per_cell: int = 2
    num_classes: int = 5
    input_size: int = 128
    anchors: tuple[float, ...] = (0.13, 0.32)

    @property
    def channels(self) -> int:
        return self.boxes_per_cell * 5 + self.num_classes

    @property
    def stride(self) -> float:
        return self.input_size / self.grid


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class YoloGrid(nn.Module):
    """Backbone of stride 16 (four stride-2 stages of 3x3 convs, 1x1 bottlenecks) and a 1x1 head.

    forward(x [N, 3, H, W]) -> [N, S, S, B*5 + C] in the documented probability layout (the graph
    that ships); `raw` gives the head's logits, which the training loss works on.
    """

    def __init__(self, spec: GridSpec = GridSpec(), width: int = 16) -> None:
        super().__init__()
        if len(spec.anchors) != spec.boxes_per_cell:
            raise ValueError("one anchor per box slot is needed")
        self.spec = spec
        w = width
        self.backbone = nn.Sequential(
            _conv(3, w, 2),
            _conv(w, 2 * w, 2),
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 2 * w, kernel=1),
            _conv(2 * w, 4 * w),
            _conv(4 * w, 8 * w, 2),
            _conv(8 * w, 4 * w, kernel=1),
            _conv(4 * w, 8 * w),
            _conv(8 * w, 8 * w),
        )
        self.head = nn.Conv2d(8 * w, spec.channels, 1)
        self.register_buffer("anchors", torch.tensor(spec.anchors, dtype=torch.float32), persistent=False)
        with torch.no_grad():  # start with low objectness: most slots are empty
            self.head.bias.zero_()
            for b in range(spec.boxes_per_cell):
                self.head.bias[5 * b + 4] = -4.0

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, H, W] -> head logits [N, S, S, B*5 + C]."""
        return self.head(self.backbone(x)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.raw(x))

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [N, S, S, B*5 + C] logits -> [N, S, S, B*5 + C] in the documented layout."""
        n_boxes = self.spec.boxes_per_cell
        boxes = raw[..., : 5 * n_boxes].reshape(*raw.shape[:3], n_boxes, 5)
        xy = torch.sigmoid(boxes[..., 0:2])
        wh = (2.0 * torch.sigmoid(boxes[..., 2:4])) ** 2 * self.anchors[:, None]
        conf = torch.sigmoid(boxes[..., 4:5])
        decoded = torch.cat([xy, wh, conf], dim=-1).reshape(*raw.shape[:3], 5 * n_boxes)
        return torch.cat([decoded, torch.softmax(raw[..., 5 * n_boxes :], dim=-1)], dim=-1)


def build_yolo_grid(
    *, grid: int = 8, boxes_per_cell: int = 2, num_classes: int = 5, input_size: int = INPUT_SIZE, width: int = 16
) -> YoloGrid:
    """Keyword-only builder; size priors spread geometrically from 13 % to 32 % of the input."""
    priors = np.geomspace(0.13, 0.32, boxes_per_cell) if boxes_per_cell > 1 else np.array([0.2])
    anchors = tuple(float(a) for a in priors.round(3))
    return YoloGrid(GridSpec(grid, boxes_per_cell, num_classes, input_size, anchors), width=width)


def _detection_defaults(num_classes: int) -> PostprocessingConfig:
    detection = DetectionConfig(layout="yolo_grid", grid=8, boxes_per_cell=2)
    return PostprocessingConfig(scores="probabilities", detection=detection)


@register_model(
    input=InputSpec(3, INPUT_SIZE, INPUT_SIZE, fixed_size=True),
    preprocessing=YOLO_PREPROCESSING,
    default_num_classes=5,
    task="detection",
    output_names=("grid",),
    postprocessing=_detection_defaults,
)
def yolo_grid(*, num_classes: int = 5) -> YoloGrid:
    """YOLO v1-style grid detector: S=8, B=2, 128x128 letterboxed input, probabilities out."""
    return build_yolo_grid(num_classes=num_classes)


@dataclass(frozen=True)
class GridTargets:
    """Training targets of one batch, per box slot and per cell.

    slot_mask bool [N, S, S, B]; slot_boxes float [N, S, S, B, 4] x1y1x2y2 input pixels;
    cell_classes float [N, S, S, C] (class distribution of the objects centred in a cell, rows of
    cells without objects are zero).
    """

    slot_mask: torch.Tensor
    slot_boxes: torch.Tensor
    cell_classes: torch.Tensor


def assign_targets(spec: GridSpec, boxes: np.ndarray, labels: np.ndarray):
    """One image's objects (boxes [K, 4] input pixels, labels [K]) -> numpy target arrays.

    Each object goes to the cell holding its centre and to the free slot whose size prior is
    nearest (log ratio); an object finding both slots of its cell taken is dropped (the v1 limit).
    """
    s, nb = spec.grid, spec.boxes_per_cell
    slot_mask = np.zeros((s, s, nb), dtype=bool)
    slot_boxes = np.zeros((s, s, nb, 4), dtype=np.float32)
    cell_classes = np.zeros((s, s, spec.num_classes), dtype=np.float32)
    anchors = np.asarray(spec.anchors) * spec.input_size
    for box, label in zip(boxes, labels):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        col = min(s - 1, max(0, int(cx / spec.stride)))
        row = min(s - 1, max(0, int(cy / spec.stride)))
        size = np.sqrt(max(box[2] - box[0], 1e-3) * max(box[3] - box[1], 1e-3))
        for slot in np.argsort(np.abs(np.log(size / anchors)), kind="stable"):
            if not slot_mask[row, col, slot]:
                slot_mask[row, col, slot] = True
                slot_boxes[row, col, slot] = box
                cell_classes[row, col, label] += 1.0
                break
    totals = cell_classes.sum(axis=-1, keepdims=True)
    np.divide(cell_classes, totals, out=cell_classes, where=totals > 0)
    return slot_mask, slot_boxes, cell_classes


def predicted_boxes(model: YoloGrid, raw: torch.Tensor) -> torch.Tensor:
    """raw [N, S, S, B*5+C] -> boxes [N, S, S, B, 4] x1y1x2y2 in input pixels."""
    spec = model.spec
    decoded = model.decode(raw)[..., : 5 * spec.boxes_per_cell].reshape(*raw.shape[:3], spec.boxes_per_cell, 5)
    idx = torch.arange(spec.grid, dtype=raw.dtype, device=raw.device)
    cx = (idx[None, None, :, None] + decoded[..., 0]) * spec.stride
    cy = (idx[None, :, None, None] + decoded[..., 1]) * spec.stride
    w, h = decoded[..., 2] * spec.input_size, decoded[..., 3] * spec.input_size
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def yolo_loss(
    model: YoloGrid, raw: torch.Tensor, targets: GridTargets, box_weight: float = 5.0, noobj_weight: float = 0.5
) -> dict[str, torch.Tensor]:
    """Box (CIoU), objectness (BCE to the achieved IoU) and class (soft cross-entropy) losses.

    All three are sums over the batch divided by the batch size, v1-style weights: box 5,
    empty-slot objectness 0.5. Returns the parts and their total under "loss".
    """
    n_boxes, batch = model.spec.boxes_per_cell, raw.shape[0]
    mask = targets.slot_mask
    boxes = predicted_boxes(model, raw)[mask]
    truth = targets.slot_boxes[mask]
    box_loss = complete_box_iou_loss(boxes, truth, reduction="sum") if len(truth) else raw.sum() * 0
    with torch.no_grad():
        iou = box_iou(boxes, truth).diagonal().clamp(min=0) if len(truth) else boxes.new_zeros(0)
    obj_logits = raw[..., : 5 * n_boxes].reshape(*raw.shape[:3], n_boxes, 5)[..., 4]
    obj_target = torch.zeros_like(obj_logits)
    obj_target[mask] = iou.to(obj_target.dtype)
    weights = torch.where(mask, torch.ones_like(obj_logits), torch.full_like(obj_logits, noobj_weight))
    obj_loss = F.binary_cross_entropy_with_logits(obj_logits, obj_target, weight=weights, reduction="sum")
    has_object = targets.cell_classes.sum(dim=-1) > 0
    log_probs = torch.log_softmax(raw[..., 5 * n_boxes :], dim=-1)
    cls_loss = -(targets.cell_classes * log_probs)[has_object].sum()
    parts = {"box": box_weight * box_loss / batch, "obj": obj_loss / batch, "cls": cls_loss / batch}
    parts["loss"] = parts["box"] + parts["obj"] + parts["cls"]
    return parts
