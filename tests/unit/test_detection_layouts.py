"""Detection layouts of models made elsewhere: the raw YOLOX head and already-decoded outputs.

Each test builds an ONNX graph answering a tensor it constructed (tests/layout_graphs.py), runs it
with ONNX Runtime, and checks our decoder against a numpy reference written here, independently of
service/postprocess/detect.py; load verdicts go through the real ModelRegistry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from service.config import DetectionConfig, parse_model_config
from service.detection_shapes import detection_problem
from service.errors import ConfigError, InternalError
from service.metrics import Metrics
from service.models import READY, UNAVAILABLE, LoadOptions, ModelRegistry
from service.postprocess.detect import NmsParams, detection_output, detections_from_output
from service.preprocess import ResizeInfo

from layout_graphs import INPUT_HW, constant_outputs, write_detector, yolox_head

# letterbox of a 100 x 192 image into 64 x 96: scale 0.5, content 50 rows high, 7 rows of padding above
LETTERBOX = ResizeInfo(original_hw=(100, 192), scale_yx=(0.5, 0.5), offset_yx=(7.0, 0.0), input_hw=INPUT_HW)
OBJECTS = [  # (stride, row, column, (cx, cy, w, h) input pixels, class, score)
    (8, 2, 3, (28.0, 18.0, 16.0, 8.0), 0, 0.9),
    (32, 1, 2, (80.0, 48.0, 40.0, 24.0), 2, 0.8),
    (16, 3, 0, (8.0, 56.0, 10.0, 12.0), 1, 0.2),  # under the 0.25 score threshold
]


def run_graph(path: Path, batch: int = 1) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.zeros((batch, 3, *INPUT_HW), np.float32)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))


def to_original(box, info: ResizeInfo = LETTERBOX):
    """Reference inverse letterbox of one x1y1x2y2 box, clipped to the image."""
    (sy, sx), (oy, ox), (height, width) = info.scale_yx, info.offset_yx, info.original_hw
    x1, y1, x2, y2 = box
    return [
        min(max((x1 - ox) / sx, 0), width),
        min(max((y1 - oy) / sy, 0), height),
        min(max((x2 - ox) / sx, 0), width),
        min(max((y2 - oy) / sy, 0), height),
    ]


def yolox_reference(head: np.ndarray, strides, threshold: float, logits: bool):
    """Anchor by anchor, level by level: (box in original pixels, class, score), best first."""
    found, anchor = [], 0
    height, width = INPUT_HW
    for stride in strides:
        for row in range(height // stride):
            for column in range(width // stride):
                x, y, log_w, log_h, *scores = (float(v) for v in head[anchor])
                anchor += 1
                if logits:
                    scores = [1 / (1 + np.exp(-v)) for v in scores]
                best = int(np.argmax(scores[1:]))
                score = scores[0] * scores[1 + best]
                if score < threshold:
                    continue
                cx, cy = (x + column) * stride, (y + row) * stride
                w, h = np.exp(log_w) * stride, np.exp(log_h) * stride
                found.append((to_original([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), best, score))
    return sorted(found, key=lambda f: -f[2])


def assert_matches(found, reference) -> None:
    assert len(found) == len(reference)
    for box, cls, score, (ref_box, ref_cls, ref_score) in zip(found.boxes, found.classes, found.scores, reference):
        assert box.tolist() == pytest.approx(ref_box, abs=1e-3)
        assert (int(cls), float(score)) == (ref_cls, pytest.approx(ref_score, abs=1e-5))


@pytest.mark.parametrize("logits", [False, True])
def test_the_yolox_head_decodes_to_the_boxes_it_encodes(tmp_path, logits):
    head = yolox_head(OBJECTS, INPUT_HW)
    if logits:  # the same probabilities, exported before their sigmoid
        head[:, 4:] = np.log(head[:, 4:] / (1 - head[:, 4:] + 1e-12) + 1e-12)
    constant_outputs(tmp_path / "yolox.onnx", {"output": head}, INPUT_HW)
    output = run_graph(tmp_path / "yolox.onnx", batch=2)["output"]
    assert output.shape == (2, 126, 8)
    config = DetectionConfig(layout="yolox", scores="logits" if logits else "probabilities")
    found = detections_from_output(output[1], config, LETTERBOX)
    reference = yolox_reference(output[1], (8, 16, 32), 0.25, logits)
    assert_matches(found, reference)
    truth = [
        (to_original([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), c, s) for *_, (cx, cy, w, h), c, s in OBJECTS
    ]
    assert_matches(found, truth[:2])  # and the reference is the truth the head was built from


def test_yolox_anchor_count_follows_input_size_and_strides():
    yolox = DetectionConfig(layout="yolox")
    assert detection_problem(yolox, 80, (-1, 3549, 85), (416, 416)) is None  # the stock YOLOX-s head
    assert "[N, 3549, 5 + 80]" in detection_problem(yolox, 80, (-1, 3500, 85), (416, 416))
    assert "not a multiple of strides [32]" in detection_problem(yolox, 80, (-1, 3549, 85), (400, 400))
    assert detection_problem(yolox, 3, (-1, 126, 9), INPUT_HW) is not None  # 4 classes' channels, 3 labels
    with pytest.raises(InternalError, match="layout yolox needs"):
        detections_from_output(np.zeros((120, 8), np.float32), yolox, LETTERBOX)


def verdict(repo: Path, name: str) -> tuple[str, str]:
    async def load():
        registry = ModelRegistry(repo, Metrics(process_metrics=False), LoadOptions(providers=("cpu",)))
        entry = await registry.load(name)
        await registry.close(1.0)
        return entry.state, entry.reason

    return asyncio.run(load())


def refused(repo: Path, name: str, config_path: Path, field: str) -> str:
    state, reason = verdict(repo, name)
    assert state == UNAVAILABLE, reason
    assert reason.startswith(f"{config_path}: {field}: "), reason
    return reason


def test_a_yolox_model_loads_and_a_wrong_stride_or_label_count_is_refused(tmp_path):
    outputs = {"output": yolox_head(OBJECTS, INPUT_HW)}
    write_detector(tmp_path, "m", {"layout": "yolox"}, outputs, ["a", "b", "c"])
    assert verdict(tmp_path, "m") == (READY, "")
    path = write_detector(tmp_path, "m", {"layout": "yolox", "strides": [8, 16]}, outputs, ["a", "b", "c"])
    reason = refused(tmp_path, "m", path, "postprocessing.detection.layout")
    assert "layout yolox needs [N, 120, 5 + 3]" in reason and "the graph gives [N, 126, 8]" in reason
    path = write_detector(tmp_path, "m", {"layout": "yolox"}, outputs, ["a", "b", "c", "d"])
    assert "[N, A, 5 + 4] for 4 labels" in refused(tmp_path, "m", path, "postprocessing.detection.layout")


# rows x1, y1, x2, y2, score, class; two overlapping class-0 boxes both stay (NMS ran in the graph)
ROWS = np.array(
    [
        [10, 20, 40, 50, 0.7, 0],
        [12, 22, 42, 52, 0.9, 0],
        [50, 10, 90, 30, 0.1, 1],  # under the threshold
        [60, 30, 80, 60, 0.5, 2],
        [0, 0, 0, 0, 0, 0],  # padding
        [0, 0, 0, 0, 0, 0],
    ],
    np.float32,
)


def decoded_reference(rows: np.ndarray, threshold: float, classes=None):
    kept = [r for r in rows.tolist() if r[4] > 0 and r[4] >= threshold and (classes is None or int(r[5]) in classes)]
    return [(to_original(r[:4]), int(r[5]), r[4]) for r in sorted(kept, key=lambda r: -r[4])]


@pytest.mark.parametrize("box_format", ["xyxy", "cxcywh"])
def test_decoded_rows_skip_nms_and_keep_threshold_class_filter_and_max(tmp_path, box_format):
    rows = ROWS.copy()
    if box_format == "cxcywh":
        rows[:, :4] = np.stack(
            [
                (ROWS[:, 0] + ROWS[:, 2]) / 2,
                (ROWS[:, 1] + ROWS[:, 3]) / 2,
                ROWS[:, 2] - ROWS[:, 0],
                ROWS[:, 3] - ROWS[:, 1],
            ],
            axis=1,
        )
    constant_outputs(tmp_path / "decoded.onnx", {"detections": rows}, INPUT_HW)
    output = run_graph(tmp_path / "decoded.onnx")["detections"][0]
    config = DetectionConfig(layout="decoded", box_format=box_format)
    assert_matches(detections_from_output(output, config, LETTERBOX), decoded_reference(ROWS, 0.25))
    filtered = detections_from_output(output, config, LETTERBOX, NmsParams(classes=(2,), score_threshold=0.05))
    assert_matches(filtered, decoded_reference(ROWS, 0.05, classes=(2,)))
    assert len(detections_from_output(output, config, LETTERBOX, NmsParams(max_detections=1))) == 1


def test_a_decoded_output_with_the_wrong_row_width_is_refused(tmp_path):
    write_detector(tmp_path, "m", {"layout": "decoded"}, {"detections": ROWS}, ["a", "b", "c"])
    assert verdict(tmp_path, "m") == (READY, "")
    path = write_detector(tmp_path, "m", {"layout": "decoded"}, {"detections": ROWS[:, :5]}, ["a", "b", "c"])
    assert "needs [N, K, 6]" in refused(tmp_path, "m", path, "postprocessing.detection.layout")


SPLIT = {"layout": "decoded_split", "boxes_output": "boxes", "scores_output": "scores", "labels_output": "labels"}


def split_outputs(rows: np.ndarray = ROWS) -> dict[str, np.ndarray]:
    return {"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].astype(np.int64)}


def test_separate_boxes_scores_labels_tensors_decode_like_their_rows(tmp_path):
    path = write_detector(tmp_path, "m", SPLIT, split_outputs(), ["a", "b", "c"])
    assert verdict(tmp_path, "m") == (READY, "")
    outputs = run_graph(path.parent / "1" / "model.onnx")
    config = parse_model_config(yaml.safe_load(path.read_text()), path)
    one_image = {name: value[0] for name, value in outputs.items()}
    found = detections_from_output(detection_output(config, one_image), config.postprocessing.detection, LETTERBOX)
    assert_matches(found, decoded_reference(ROWS, 0.25))


def test_separate_tensors_of_the_wrong_shape_or_unnamed_are_refused(tmp_path):
    wrong = {**split_outputs(), "boxes": ROWS[:, :5]}
    path = write_detector(tmp_path, "m", SPLIT, wrong, ["a", "b", "c"])
    reason = refused(tmp_path, "m", path, "postprocessing.detection.boxes_output")
    assert "output 'boxes' must be [N, K, 4]" in reason
    with pytest.raises(ConfigError, match="needs boxes_output, scores_output and labels_output"):
        parse_model_config(
            yaml.safe_load(path.read_text()) | {"postprocessing": {"detection": {"layout": "decoded_split"}}}, path
        )
    data = yaml.safe_load(path.read_text())
    data["postprocessing"]["detection"]["labels_output"] = "classes"
    with pytest.raises(ConfigError, match="labels_output 'classes' is not among outputs"):
        parse_model_config(data, path)


def test_separate_tensors_disagreeing_on_k_at_run_time_are_refused_not_decoded(tmp_path):
    path = write_detector(tmp_path, "m", SPLIT, split_outputs(), ["a", "b", "c"])
    config = parse_model_config(yaml.safe_load(path.read_text()), path)
    one_image = {**split_outputs(), "scores": ROWS[:4, 4]}  # 4 scores for 6 boxes
    with pytest.raises(InternalError, match="disagree on K"):
        detection_output(config, one_image)
