"""Server CPU that tracking adds per StreamDetect frame: 20 objects moving through a synthetic scene.

    python -m bench.tracking                 # 2,000 frames, prints the median and p90 per frame
    python -m bench.tracking --objects 50 --frames 5000

Two timings per frame, both single-threaded on one stream, as the server runs them:
- `update`: the pure tracker step (service.postprocess.tracking.update: predict, two IoU passes,
  Kalman updates, births/deaths, the end of tracks predicted outside the picture);
- `stream`: what StreamDetect adds to a result, the tracker step plus counting (one line, one zone),
  the events and the protobuf fields (service.servicers.track_convert.track_result).
The objects bounce around a 640x480 frame with 2 px of box noise; each frame 5 % of them are missed
and their scores vary, so both association passes and the occlusion path run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.postprocess.counting import CountLine, CountZone
from service.postprocess.tracking import TrackerParams, TrackerState, update
from service.servicers.track_convert import track_result
from service.stream_tracking import StreamTracking, track_settings


def scene(objects: int, frames: int, seed: int = 0):
    """Per frame: boxes [M, 4], scores [M], classes [M] (M <= objects)."""
    rng = np.random.default_rng(seed)
    position = rng.uniform([0, 0], [600, 440], size=(objects, 2))
    velocity = rng.uniform(-4, 4, size=(objects, 2))
    size = rng.uniform(20, 40, size=(objects, 1))
    classes = rng.integers(0, 5, size=objects)
    for _ in range(frames):
        position += velocity
        velocity[(position[:, 0] < 0) | (position[:, 0] > 600), 0] *= -1
        velocity[(position[:, 1] < 0) | (position[:, 1] > 440), 1] *= -1
        seen = rng.random(objects) > 0.05
        top_left = position + rng.normal(0, 2, size=position.shape)
        boxes = np.concatenate([top_left, top_left + size], axis=1)[seen].astype(np.float32)
        scores = rng.uniform(0.3, 0.99, size=objects)[seen]
        yield boxes, scores, classes[seen]


def time_update(frames: list, params: TrackerParams) -> list[float]:
    state, times = TrackerState.empty(), []
    for boxes, scores, classes in frames:
        started = time.perf_counter()
        state, _ = update(state, boxes, scores, classes, 1, params, view=(640.0, 480.0))
        times.append(time.perf_counter() - started)
    return times


def time_stream(frames: list, labels: list[str]) -> list[float]:
    settings = track_settings(
        lines=[CountLine("door", (320, 0), (320, 480))],
        zones=[CountZone("shelf", ((0, 0), (320, 0), (320, 240), (0, 240)))],
    )
    tracking, times = StreamTracking(settings), []
    for index, (boxes, scores, classes) in enumerate(frames):
        detections = [
            vpb.Detection(box=vpb.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), class_index=int(c), label=labels[c], score=s)
            for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())
        ]
        result = vpb.DetectFrameResult(
            frame_id=index,
            capture_timestamp_us=index * 33_333,
            result=vpb.DetectResult(detections=detections, image_width=640, image_height=480),
        )
        started = time.perf_counter()
        track_result(tracking, result, labels)
        times.append(time.perf_counter() - started)
    return times


def report(name: str, times: list[float], warmup: int) -> str:
    times = sorted(times[warmup:])
    median, p90 = statistics.median(times) * 1e3, times[int(0.9 * len(times))] * 1e3
    return f"{name:7s} median {median:.3f} ms/frame, p90 {p90:.3f} ms, {len(times)} frames"


def cpu_model() -> str:
    """The CPU's model name (what `lscpu` shows), for the figures' context."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args(argv)
    frames = list(scene(args.objects, args.frames))
    warmup = min(50, args.frames // 10)
    print(f"tracking, {args.objects} objects, CPU {cpu_model()}, numpy {np.__version__}")
    print(report("update", time_update(frames, TrackerParams()), warmup))
    print(report("stream", time_stream(frames, ["face", "circle", "square", "triangle", "star"]), warmup))


if __name__ == "__main__":
    main()
