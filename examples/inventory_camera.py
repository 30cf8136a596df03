"""Inventory camera: count the items on a shelf, by class, from a camera stream.

    python -m examples.inventory_camera --host 127.0.0.1:8001                      # the bundled clip
    python -m examples.inventory_camera --source 0 --drop-frames                   # a webcam
    python -m examples.inventory_camera --csv counts.csv --output annotated.gif \\
        --truth examples/videos/inventory.json                                     # score it too
    python -m examples.inventory_camera --shelf-zone 0,0,160,120                   # only part of the view

Frames go through StreamDetect (reconnecting when the server restarts; frames lost in flight are
reported). Per answered frame it keeps the count of each item class and a smoothed count (the
median over the last `--window` frames), prints a line per frame (a progress bar for files),
and writes:
- `--csv`: one row per frame id, in order: status (ok, dropped, error, lost), capture time,
  server processing time, the count and the smoothed count of each class;
- `--output`: the frames with boxes and counts drawn, as MJPG .avi or .gif.
The server tracks the items (StreamDetect `track` options) with the shelf as a counting zone
(`--shelf-zone x1,y1,x2,y2`, default the whole view): the report ends with the items added (entered
the zone after the first frame) and removed (left it, or vanished for `--max-age-s` seconds) per
class. Per-frame counts are of the tracked items and of new ones sure enough to start a track.
With `--truth` (a ground-truth JSON of examples/make_sample_videos.py) it also reports on how many
frames the counts match exactly. Exit code 0 when the stream finished, 1 when it gave up.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from examples.camera_stream import (
    VIDEOS,
    AnnotatedOutput,
    CountSmoother,
    Progress,
    add_stream_arguments,
    count_labels,
    detection_stream,
    draw_detections,
    interruption_text,
    open_source,
    stream_summary,
)
from examples.tracked_counts import TRACK_SCORE_THRESHOLD, TrackLedger, counted, parse_box
from service.client import CountZone, RpcFailed, TrackOptions, VisionClient

ITEM_CLASSES = ("circle", "square", "triangle", "star")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_arguments(parser, VIDEOS / "inventory.avi")
    parser.add_argument("--classes", default=",".join(ITEM_CLASSES), help="comma-separated item classes to count")
    parser.add_argument("--window", type=int, default=5, help="frames in the smoothing window")
    parser.add_argument("--csv", type=Path, help="write per-frame counts here")
    parser.add_argument("--output", type=Path, help="write the annotated frames here (.avi or .gif)")
    parser.add_argument("--truth", type=Path, help="ground-truth JSON: report how often the counts match it")
    parser.add_argument(
        "--shelf-zone",
        type=parse_box,
        default=parse_box("-1,-1,100000,100000"),
        help="x1,y1,x2,y2 of the shelf in the image (default: the whole view)",
    )
    parser.add_argument(
        "--max-age-s",
        type=float,
        default=1.0,
        help="an item unseen this long has been taken (default 1 s; longer rides out occlusions)",
    )
    return parser.parse_args(argv)


def shelf_lines(ledger: TrackLedger, classes: tuple[str, ...]) -> list[str]:
    """The report's last lines: per class, added, removed and on the shelf now."""
    lines = []
    for name in classes:
        added, removed, inside = ledger.zone_changes("shelf", name)
        lines.append(f"shelf {name}: added {added}, removed {removed}, on the shelf {inside}")
    return lines


class CountTable:
    """The CSV rows, one per frame id, in order; kept in memory for the ground-truth check."""

    def __init__(self, classes: tuple[str, ...]):
        self.classes = classes
        self.header = ["frame_id", "status", "capture_s", "server_ms", *classes, *(f"smoothed_{c}" for c in classes)]
        self.rows: list[dict] = []

    def add(
        self,
        frame_id: int,
        status: str,
        capture_us: int | None = None,
        server_us: int | None = None,
        counts: dict | None = None,
        smoothed: dict | None = None,
    ) -> None:
        row = {
            "frame_id": frame_id,
            "status": status,
            "capture_s": "" if capture_us is None else f"{capture_us / 1e6:.3f}",
            "server_ms": "" if server_us is None else f"{server_us / 1e3:.1f}",
        }
        for name in self.classes:
            row[name] = "" if counts is None else counts[name]
            row[f"smoothed_{name}"] = "" if smoothed is None else smoothed[name]
        self.rows.append(row)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.header)
            writer.writeheader()
            writer.writerows(self.rows)


def truth_report(table: CountTable, truth_path: Path) -> str:
    """How many answered frames' counts (raw and smoothed) equal the ground truth's."""
    truth = {entry["frame"]: entry["counts"] for entry in json.loads(truth_path.read_text())["frames"]}
    answered = [row for row in table.rows if row["status"] == "ok" and row["frame_id"] in truth]
    if not answered:
        return "ground truth: no answered frame to compare"

    def matches(prefix: str) -> int:
        return sum(all(row[prefix + c] == truth[row["frame_id"]].get(c, 0) for c in table.classes) for row in answered)

    raw, smooth = matches(""), matches("smoothed_")
    return (
        f"ground truth: counts match on {raw}/{len(answered)} frames ({100 * raw / len(answered):.1f} %), "
        f"smoothed on {smooth}/{len(answered)} ({100 * smooth / len(answered):.1f} %)"
    )


def run(args: argparse.Namespace) -> int:
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    info, frames = open_source(args.source, fps=args.fps, realtime=args.realtime, max_frames=args.max_frames)
    progress = Progress(info, enabled=not args.quiet)
    table, smoother = CountTable(classes), CountSmoother(classes, args.window)
    output = AnnotatedOutput(args.output, info.fps) if args.output else None
    errors, ledger = 0, TrackLedger()
    print(f"inventory: {info.description} -> {args.model} at {args.host}", flush=True)
    track = TrackOptions(zones=(CountZone("shelf", args.shelf_zone),), max_age=max(1, round(args.max_age_s * info.fps)))

    def on_interruption(event):
        progress.message(interruption_text(event))
        ledger.interrupted()
        for frame_id in event.lost_frame_ids:
            table.add(frame_id, "lost")

    with VisionClient(args.host, token=args.token) as client:
        stream = detection_stream(client, frames, args, on_interruption, track, TRACK_SCORE_THRESHOLD)
        try:
            for frame, result in stream:
                ledger.add(result)
                if result.dropped or result.error is not None:
                    errors += result.error is not None
                    status = "dropped" if result.dropped else "error"
                    table.add(result.frame_id, status, result.capture_timestamp_us)
                    detail = f": {result.error.message}" if result.error else ""
                    progress.frame(f"frame {result.frame_id:5d}  {status}{detail}")
                    continue
                counts = count_labels([d for d in result.result.detections if counted(d)], classes)
                smoothed = smoother.update(counts)
                table.add(
                    result.frame_id, "ok", result.capture_timestamp_us, result.server_processing_us, counts, smoothed
                )
                shown = "  ".join(f"{c} {counts[c]} ({smoothed[c]})" for c in classes)
                progress.frame(f"frame {result.frame_id:5d}  {shown}")
                if output is not None:
                    output.write(draw_detections(frame.image, result.result.detections, [shown.replace("  ", " ")]))
        except RpcFailed as error:
            progress.message(f"stream failed: {error}")
            return 1
        finally:
            progress.close()
            if output is not None:
                output.close()
            if args.csv:
                table.write(args.csv)
    print(stream_summary(stream, errors))
    print("\n".join(shelf_lines(ledger, classes)))
    if args.truth:
        print(truth_report(table, args.truth))
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
