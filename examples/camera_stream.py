"""What the camera-app examples share: frame sources, the reconnecting detection stream, count
smoothing, progress display and annotated output. Needs only the serving dependencies (numpy,
OpenCV, gRPC); writing a GIF also needs Pillow.

A source is a video file, a directory of images (read in name order) or a webcam index ("0").
Files can be replayed at their frame rate (`--realtime`) to behave like a live camera. Capture
timestamps are the video time (microseconds since its first frame) for files and directories, and
the wall clock for a live camera, so per-window reports mean the same thing for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from service.client import TrackOptions, VisionClient
from service.client.images import Frame
from service.client.reconnect import ReconnectingStream, ReconnectPolicy, StreamInterruption
from service.client.results import Detection

VIDEOS = Path(__file__).resolve().parent / "videos"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class SourceInfo:
    """description: what was opened; frame_count None for a live camera; fps nominal."""

    description: str
    fps: float
    frame_count: int | None
    live: bool


def open_source(
    spec: str, *, fps: float | None = None, realtime: bool = False, max_frames: int | None = None
) -> tuple[SourceInfo, Iterator[Frame]]:
    """Open a webcam index, an image directory or a video file; frames are BGR uint8 `Frame`s."""
    if spec.isdigit():
        capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise SystemExit(f"cannot open camera {spec}")
        info = SourceInfo(f"camera {spec}", fps or capture.get(cv2.CAP_PROP_FPS) or 30.0, None, True)
        return info, _limited(_camera_frames(capture), max_frames)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        info = SourceInfo(f"{len(files)} images in {path}", fps or 10.0, len(files), False)
        frames = (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files)
    else:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise SystemExit(f"cannot open video {path} (OpenCV found no reader for it)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        info = SourceInfo(f"video {path}", fps or capture.get(cv2.CAP_PROP_FPS) or 10.0, count, False)
        frames = _video_frames(capture)
    if max_frames is not None and info.frame_count is not None:
        info = SourceInfo(info.description, info.fps, min(info.frame_count, max_frames), False)
    return info, _limited(_timed(frames, info.fps, realtime), max_frames)


def _video_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield image
    finally:
        capture.release()


def _camera_frames(capture: cv2.VideoCapture) -> Iterator[Frame]:
    """Live frames stamped with the wall clock when read."""
    for index, image in enumerate(_video_frames(capture)):
        yield Frame(image, index, time.time_ns() // 1000)


def _timed(images: Iterator[np.ndarray], fps: float, realtime: bool) -> Iterator[Frame]:
    """File frames stamped with video time; with `realtime`, at most `fps` frames a second.

    Pacing is from one frame to the next, never catching up: after a pause (the stream was
    reconnecting) frames go on at the video's rate instead of in a burst.
    """
    due = time.monotonic()
    for index, image in enumerate(images):
        if image is None:
            continue  # an unreadable file in a directory: skip it
        if realtime:
            now = time.monotonic()
            time.sleep(max(0.0, due - now))
            due = max(due, now) + 1.0 / fps
        yield Frame(image, index, round(index * 1e6 / fps))


def _limited(frames: Iterator[Frame], max_frames: int | None) -> Iterator[Frame]:
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            return
        yield frame


def count_labels(detections: Sequence[Detection], classes: Sequence[str]) -> dict[str, int]:
    """Detections per class name, for the classes asked about (others are ignored)."""
    labels = [d.label for d in detections]
    return {name: labels.count(name) for name in classes}


class CountSmoother:
    """Median count per class over the last `window` answered frames.

    One missed or doubled detection in a frame does not move the median, so the smoothed count
    stays put while the scene does; a real change shows after window // 2 + 1 frames.
    """

    def __init__(self, classes: Sequence[str], window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._history = {name: deque(maxlen=window) for name in classes}

    def update(self, counts: dict[str, int]) -> dict[str, int]:
        for name, history in self._history.items():
            history.append(counts.get(name, 0))
        return {name: int(round(statistics.median(history))) for name, history in self._history.items()}


class Progress:
    """A progress bar on stderr for a file, a line per frame on stdout for a live camera."""

    def __init__(self, info: SourceInfo, enabled: bool = True):
        self.info = info
        self.enabled = enabled
        self._bar = enabled and not info.live and info.frame_count is not None
        self._done = 0

    def frame(self, line: str) -> None:
        self._done += 1
        if not self.enabled:
            return
        if not self._bar:
            print(line, flush=True)
            return
        total = self.info.frame_count
        filled = int(30 * min(self._done, total) / total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self._done}/{total}  {line[:60]:<60}")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        """An event line (reconnect, warning) that does not garble the bar."""
        if self._bar and self._done:
            sys.stderr.write("\n")
        print(text, flush=True)

    def close(self) -> None:
        if self._bar and self._done:
            sys.stderr.write("\n")
            sys.stderr.flush()


def draw_detections(image: np.ndarray, detections: Sequence[Detection], lines: Sequence[str] = ()) -> np.ndarray:
    """A copy of a BGR image with boxes, labels and a few text lines at the top left."""
    canvas = image.copy()
    for d in detections:
        colour = _COLOURS[d.class_index % len(_COLOURS)]
        p1, p2 = (int(round(d.box.x1)), int(round(d.box.y1))), (int(round(d.box.x2)), int(round(d.box.y2)))
        cv2.rectangle(canvas, p1, p2, colour, 1)
        cv2.putText(
            canvas, f"{d.label} {d.score:.2f}", (p1[0], max(8, p1[1] - 2)), cv2.FONT_HERSHEY_PLAIN, 0.7, colour, 1
        )
    for row, text in enumerate(lines):
        origin = (3, 11 + 11 * row)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


_COLOURS = ((80, 80, 255), (255, 160, 40), (60, 220, 60), (40, 220, 255), (230, 80, 230), (255, 255, 80))


class AnnotatedOutput:
    """Frames to an MJPG .avi (OpenCV's own writer, no codec needed) or an animated .gif (Pillow)."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._gif: list = []
        if path.suffix.lower() not in (".avi", ".gif"):
            raise SystemExit(f"annotated output must be .avi or .gif, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        if self.path.suffix.lower() == ".gif":
            self._gif.append(image[:, :, ::-1].copy())
            return
        if self._writer is None:
            size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), self.fps, size
            )
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self._gif:
            try:
                from PIL import Image
            except ImportError:
                raise SystemExit(
                    "writing a GIF needs Pillow (pip install pillow); use an .avi output instead"
                ) from None
            images = [Image.fromarray(rgb) for rgb in self._gif]
            images[0].save(self.path, save_all=True, append_images=images[1:], duration=round(1000 / self.fps), loop=0)


def add_stream_arguments(parser: argparse.ArgumentParser, default_source: Path) -> None:
    parser.add_argument(
        "--source",
        default=str(default_source),
        help="video file, directory of images, or webcam index such as 0 (default: the bundled sample)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("CONVSERVE_HOST", "127.0.0.1:8001"),
        help="server address host:port [env CONVSERVE_HOST]",
    )
    parser.add_argument("--token", default=os.environ.get("CONVSERVE_TOKEN"), help="bearer token [env CONVSERVE_TOKEN]")
    parser.add_argument("--model", default="yolo_grid", help="detection model (default: the bundled yolo_grid)")
    parser.add_argument("--score-threshold", type=float, help="minimum detection score (default: the model's)")
    parser.add_argument(
        "--drop-frames",
        action="store_true",
        help="let the server skip stale frames when it falls behind (default: flow control)",
    )
    parser.add_argument(
        "--max-pending", type=int, default=0, help="frames the server may hold at once (0: its default)"
    )
    parser.add_argument("--realtime", action="store_true", help="replay a file at its frame rate, like a live camera")
    parser.add_argument("--fps", type=float, help="frame rate of the source (default: the video's, 10 for a directory)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=16,
        help="most frames sent and not yet answered: what one broken connection can lose (0: no limit)",
    )
    parser.add_argument("--max-reconnects", type=int, default=20, help="consecutive reconnect tries before giving up")
    parser.add_argument("--quiet", action="store_true", help="no per-frame line or progress bar")


def detection_stream(
    client: VisionClient,
    frames: Iterator[Frame],
    args: argparse.Namespace,
    on_interruption: Callable[[StreamInterruption], None],
    track: TrackOptions | None = None,
    score_threshold: float | None = None,
) -> ReconnectingStream:
    """A reconnecting StreamDetect over `frames` with the command line's options (`--score-threshold`
    over `score_threshold`); with `track` the server tracks the objects (each reconnect restarts it)."""
    threshold = args.score_threshold if args.score_threshold is not None else score_threshold

    def open_stream(batch):
        return client.stream_detect(
            batch,
            args.model,
            score_threshold=threshold,
            drop_frames=args.drop_frames,
            max_pending=args.max_pending,
            track=track,
        )

    policy = ReconnectPolicy(max_attempts=args.max_reconnects, backoff_max_s=1.0)
    return ReconnectingStream(client, open_stream, frames, policy, on_interruption, max_in_flight=args.max_in_flight)


def interruption_text(event: StreamInterruption) -> str:
    ids = ", ".join(str(i) for i in event.lost_frame_ids[:10]) + (" ..." if len(event.lost_frame_ids) > 10 else "")
    outcome = f"resumed after {event.attempts} tries, {event.downtime_s:.1f} s" if event.resumed else "did not resume"
    return (
        f"connection lost after frame {event.last_answered_id} ({event.error.code.name}: {event.error.details}); "
        f"{outcome}; {len(event.lost_frame_ids)} frames in flight lost" + (f": {ids}" if ids else "")
    )


def stream_summary(stream: ReconnectingStream, errors: int) -> str:
    return (
        f"frames sent {stream.sent}, answered {stream.answered} (dropped by the server {stream.dropped}, "
        f"errors {errors}), lost in flight {stream.lost} over {len(stream.interruptions)} reconnect(s)"
    )
