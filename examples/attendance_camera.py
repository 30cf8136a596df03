"""Attendance camera: who is present in a classroom feed, counted against the roster size.

    python -m examples.attendance_camera --host 127.0.0.1:8001 --roster 7          # the bundled clip
    python -m examples.attendance_camera --source 0 --roster 25 --window-s 10      # a webcam
    python -m examples.attendance_camera --door-line 0,120,640,120                 # count a doorway

The same reconnecting StreamDetect loop as the inventory example, counting the detector's `face`
class. For each window of `--window-s` seconds of capture time it reports the people present (the
median face count over the window's frames, so one missed face in one frame does not mark
someone absent) and absent (roster - present). At the end it takes the answered frame whose
weakest face detection had the lowest score, saves its face crops, and asks Explain on the CAM
model (`--cam-model`, default the bundled gap_cnn) where the evidence for "face" lies in each
crop, saving the CAM overlays next to the crops: a quick look at why the detector hesitated.
The server tracks the faces (StreamDetect `track` options), so the report ends with the people who
came in: unique face tracks that crossed the door line inwards (`--door-line x1,y1,x2,y2`, "in"
being the right-hand side looking from the first point to the second), or without a door line the
unique face tracks present for at least `--min-present-s` seconds.
`--csv` writes one row per window. Exit code 0 when the stream finished, 1 when it gave up.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from examples.camera_stream import (
    VIDEOS,
    Progress,
    add_stream_arguments,
    detection_stream,
    interruption_text,
    open_source,
    stream_summary,
)
from examples.tracked_counts import TRACK_SCORE_THRESHOLD, TrackLedger, counted, parse_line
from service.client import CountLine, RpcFailed, TrackOptions, VisionClient
from service.client.results import Detection


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_arguments(parser, VIDEOS / "attendance.avi")
    parser.add_argument("--roster", type=int, default=7, help="people expected (default 7: the bundled clip's class)")
    parser.add_argument("--window-s", type=float, default=1.0, help="seconds of capture time per report line")
    parser.add_argument("--face-class", default="face", help="the detector's label for a face")
    parser.add_argument("--cam-model", default="gap_cnn", help="classifier with class activation maps, for Explain")
    parser.add_argument(
        "--crops-dir",
        type=Path,
        default=Path("demo-output") / "attendance",
        help="where the low-confidence frame's face crops and CAM overlays go",
    )
    parser.add_argument("--csv", type=Path, help="write one row per window here")
    parser.add_argument("--door-line", type=parse_line, help="x1,y1,x2,y2: people came in when they crossed it inwards")
    parser.add_argument(
        "--min-present-s",
        type=float,
        default=0.5,
        help="without a door line: a face tracked this long came in (default 0.5 s)",
    )
    return parser.parse_args(argv)


def entered_line(ledger: TrackLedger, args: argparse.Namespace) -> str:
    """The report's last line: who came in, by the door line or by time present."""
    if args.door_line is not None:
        count = ledger.line_total("door", args.face_class, "crossed_in")
        return f"entered: {count} people crossed the door line inwards"
    count = ledger.present_at_least(args.face_class, args.min_present_s)
    return f"entered: {count} people (unique faces tracked for >= {args.min_present_s:g} s)"


@dataclass
class Window:
    """Face counts of the answered frames whose capture time falls in [start_s, start_s + length)."""

    start_s: float
    counts: list[int] = field(default_factory=list)

    def present(self) -> int:
        return int(round(statistics.median(self.counts))) if self.counts else 0


@dataclass
class WeakestFrame:
    """The answered frame whose least confident face scored lowest so far (a copy of its pixels)."""

    frame_id: int = -1
    score: float = 2.0
    image: np.ndarray | None = None
    faces: tuple[Detection, ...] = ()

    def offer(self, frame_id: int, image: np.ndarray, faces: list[Detection]) -> None:
        if faces and min(f.score for f in faces) < self.score:
            self.frame_id, self.score, self.image, self.faces = (
                frame_id,
                min(f.score for f in faces),
                image.copy(),
                tuple(faces),
            )


class AttendanceLog:
    """Windows of capture time: each closed window becomes a report line and a CSV row."""

    def __init__(self, roster: int, window_s: float):
        if roster < 1 or window_s <= 0:
            raise SystemExit("--roster must be >= 1 and --window-s > 0")
        self.roster, self.window_s = roster, window_s
        self.origin_us: int | None = None
        self.current: Window | None = None
        self.rows: list[dict] = []

    def add(self, capture_us: int, faces: int) -> str | None:
        """Record one frame; returns the report line of a window this frame closed, if any."""
        self.origin_us = capture_us if self.origin_us is None else self.origin_us
        start = (capture_us - self.origin_us) / 1e6 // self.window_s * self.window_s
        line = None
        if self.current is not None and start != self.current.start_s:
            line = self.close()
        if self.current is None:
            self.current = Window(start)
        self.current.counts.append(faces)
        return line

    def close(self) -> str | None:
        window, self.current = self.current, None
        if window is None or not window.counts:
            return None
        present = window.present()
        row = {
            "start_s": f"{window.start_s:.1f}",
            "end_s": f"{window.start_s + self.window_s:.1f}",
            "frames": len(window.counts),
            "present": present,
            "absent": max(self.roster - present, 0),
            "min_faces": min(window.counts),
            "max_faces": max(window.counts),
        }
        self.rows.append(row)
        return (
            f"{row['start_s']:>6}-{row['end_s']} s  present {present}/{self.roster}  absent {row['absent']}"
            f"  (frames {row['frames']}, faces {row['min_faces']}-{row['max_faces']})"
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, ["start_s", "end_s", "frames", "present", "absent", "min_faces", "max_faces"]
            )
            writer.writeheader()
            writer.writerows(self.rows)


def face_crops(image: np.ndarray, faces: tuple[Detection, ...], margin: float = 0.15) -> list[np.ndarray]:
    """Each face box grown by `margin` of its size on every side, clipped to the image."""
    height, width = image.shape[:2]
    crops = []
    for face in faces:
        dx, dy = (face.box.x2 - face.box.x1) * margin, (face.box.y2 - face.box.y1) * margin
        x1, y1 = max(0, int(face.box.x1 - dx)), max(0, int(face.box.y1 - dy))
        x2, y2 = min(width, int(np.ceil(face.box.x2 + dx))), min(height, int(np.ceil(face.box.y2 + dy)))
        if x2 - x1 >= 4 and y2 - y1 >= 4:
            crops.append(np.ascontiguousarray(image[y1:y2, x1:x2]))
    return crops


def explain_weakest(client: VisionClient, weakest: WeakestFrame, args: argparse.Namespace) -> list[str]:
    """Save the weakest frame's face crops and their CAM overlays; returns report lines."""
    if weakest.image is None:
        return ["no face was detected in any frame: nothing to explain"]
    out = args.crops_dir
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / f"frame_{weakest.frame_id}.png"), weakest.image)
    crops = face_crops(weakest.image, weakest.faces)
    for index, crop in enumerate(crops):
        cv2.imwrite(str(out / f"frame_{weakest.frame_id}_face_{index}.png"), crop)
    lines = [
        f"lowest-confidence frame {weakest.frame_id} (weakest face {weakest.score:.2f}): "
        f"{len(crops)} face crops in {out}"
    ]
    try:
        ranked = client.classify(crops, args.cam_model, top_k=1000).results
        face_index = next(p.class_index for p in ranked[0].predictions if p.label == args.face_class)
        maps = client.explain(crops, args.cam_model, class_index=face_index, overlay=True).results
    except RpcFailed as error:
        if error.code == grpc.StatusCode.UNIMPLEMENTED:
            return lines + [
                "Explain is not available on this server yet (UNIMPLEMENTED): crops saved without CAM overlays"
            ]
        return lines + [
            f"Explain on {args.cam_model} failed ({error.code.name}: {error.details}): crops saved without CAM overlays"
        ]
    except StopIteration:
        return lines + [f"{args.cam_model} has no class {args.face_class!r}: crops saved without CAM overlays"]
    for index, (ranking, cam) in enumerate(zip(ranked, maps)):
        (out / f"frame_{weakest.frame_id}_face_{index}_cam.jpg").write_bytes(cam.overlay)
        top = ranking.top
        lines.append(
            f"  face {index}: {args.cam_model} says {top.label} {top.score:.2f}; "
            f"P({args.face_class}) {cam.score:.2f}; CAM overlay saved ({cam.method})"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    info, frames = open_source(args.source, fps=args.fps, realtime=args.realtime, max_frames=args.max_frames)
    progress = Progress(info, enabled=not args.quiet)
    log, weakest, errors, ledger = AttendanceLog(args.roster, args.window_s), WeakestFrame(), 0, TrackLedger()
    print(f"attendance: {info.description} -> {args.model} at {args.host}, roster {args.roster}", flush=True)
    track = TrackOptions(lines=(CountLine("door", *args.door_line),) if args.door_line else ())

    def on_interruption(event):
        progress.message(interruption_text(event))
        ledger.interrupted()

    with VisionClient(args.host, token=args.token) as client:
        stream = detection_stream(client, frames, args, on_interruption, track, TRACK_SCORE_THRESHOLD)
        try:
            for frame, result in stream:
                ledger.add(result)
                if result.dropped or result.error is not None:
                    errors += result.error is not None
                    continue
                faces = [d for d in result.result.detections if d.label == args.face_class and counted(d)]
                weakest.offer(result.frame_id, frame.image, faces)
                progress.frame(f"frame {result.frame_id:5d}  faces {len(faces)}")
                line = log.add(result.capture_timestamp_us, len(faces))
                if line:
                    progress.message(line)
        except RpcFailed as error:
            progress.message(f"stream failed: {error}")
            return 1
        finally:
            final = log.close()
            if final:
                progress.message(final)
            progress.close()
            if args.csv:
                log.write(args.csv)
        print(stream_summary(stream, errors))
        print(entered_line(ledger, args))
        for line in explain_weakest(client, weakest, args):
            print(line)
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
