"""Detectors made elsewhere, through a real server: a raw YOLOX head and separate boxes/scores/labels
outputs (NMS in the graph) answer Detect with the boxes their graphs encode, in original pixels.

The expected boxes are the true ones the constant graphs were built from, mapped back through the
letterbox by hand (a 100 x 192 image in a 64 x 96 input: scale 0.5, 7 rows of padding above).
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc

from layout_graphs import write_detector, yolox_head
from testkit import ServerThread, test_settings

OBJECTS = [  # (stride, row, column, (cx, cy, w, h) input pixels, class, score)
    (8, 2, 3, (28.0, 18.0, 16.0, 8.0), 0, 0.9),
    (32, 1, 2, (80.0, 48.0, 40.0, 24.0), 2, 0.8),
]
LABELS = ["person", "bicycle", "car"]


def original_box(cx, cy, w, h):
    """Input pixels -> the 100 x 192 image's pixels, (x - 0) / 0.5 and (y - 7) / 0.5, clipped to the image."""
    x1, y1, x2, y2 = (cx - w / 2) * 2, (cy - h / 2 - 7) * 2, (cx + w / 2) * 2, (cy + h / 2 - 7) * 2
    return [min(max(x1, 0), 192), min(max(y1, 0), 100), min(max(x2, 0), 192), min(max(y2, 0), 100)]


def detect(channel, name: str, image: vpb.Image):
    request = vpb.DetectRequest(model=vpb.ModelRef(name=name), images=[image, image])
    return vpb_grpc.VisionServiceStub(channel).Detect(request, timeout=30).results


def test_yolox_and_separate_tensor_detectors_answer_detect_in_original_pixels(tmp_path):
    repo = tmp_path / "repo"
    write_detector(repo, "yolox", {"layout": "yolox"}, {"output": yolox_head(OBJECTS, (64, 96))}, LABELS)
    boxes = np.array([[c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2] for *_, c, _, _ in OBJECTS])
    split = {
        "boxes": np.concatenate([boxes, np.zeros((2, 4))]).astype(np.float32),  # input pixels  # two padding rows
        "scores": np.array([0.9, 0.8, 0, 0], np.float32),
        "labels": np.array([0, 2, 0, 0], np.int64),
    }
    names = {"layout": "decoded_split", "boxes_output": "boxes", "scores_output": "scores", "labels_output": "labels"}
    write_detector(repo, "nms_in_graph", names, split, LABELS)
    encoded, data = cv2.imencode(".png", np.full((100, 192, 3), 90, np.uint8))
    assert encoded
    image = vpb.Image(encoded=data.tobytes())
    expected = [(original_box(*box), LABELS[label], score) for *_, box, label, score in OBJECTS]

    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            for name in ("yolox", "nms_in_graph"):
                results = detect(channel, name, image)
                assert len(results) == 2
                for result in results:
                    assert (result.image_width, result.image_height) == (192, 100)
                    found = [([d.box.x1, d.box.y1, d.box.x2, d.box.y2], d.label, d.score) for d in result.detections]
                    assert len(found) == len(expected), (name, found)
                    for (box, label, score), (want_box, want_label, want_score) in zip(found, expected):
                        assert box == pytest.approx(want_box, abs=1e-3), name
                        assert (label, score) == (want_label, pytest.approx(want_score, abs=1e-6)), name
    finally:
        server.stop()
