"""Tracking quality of StreamDetect on the sample clips: MOTA, IDF1 and ID switches (py-motmetrics)
against the clips' ground-truth tracks, and the unique-object count against the truth.

    python -m examples.evaluate_tracking                       # starts a server on a loopback port
    python -m examples.evaluate_tracking --host 127.0.0.1:8001 # or uses a running one
    python -m examples.evaluate_tracking --markdown            # the table of docs/camera-apps.md

Clips: the bundled attendance and inventory clips, and the held-out pair drawn with another seed
(`examples.make_sample_videos --heldout`, written to a temporary directory; never used to choose a
setting). Each clip is streamed twice with the default track options: every frame, then with 30 %
of the frames (seeded) never sent by the client; the frame ids keep their gaps, so the server
predicts through them. Only the frames sent are scored: a ground-truth box matches a confirmed
track's box at IoU >= 0.5. A person less than half inside the picture (walking through a border)
is "don't care", as in the MOTChallenge benchmarks: neither a miss when no track covers it nor a
false positive when one does. Needs the dev extra (motmetrics) and, for the held-out clips, the
export extra (the clip generator). Exit code 1 when a clip's unique-track count differs from the
ground truth's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.camera_stream import VIDEOS, open_source
from service.client import Frame, TrackOptions, VisionClient
from service.postprocess.nms import box_iou

DROP_FRACTION = 0.3
DROP_SEED = 5
SCORE_THRESHOLD = 0.1  # the detector's weak boxes reach the tracker's low-score pass
MIN_VISIBLE = 0.5  # ground truth less visible than this is scored as "don't care"


@dataclass(frozen=True)
class ClipScore:
    clip: str
    condition: str
    frames: int
    mota: float
    idf1: float
    switches: int
    unique: dict[str, int]
    true_unique: dict[str, int]
    present_error: float  # mean |tracks alive - objects at least half inside| over the frames answered


def stream_clip(client: VisionClient, video: Path, model: str, keep: np.ndarray, track: TrackOptions):
    """Send the frames where `keep`; returns ({frame id: [(track id, box)]}, {frame id: tracks alive},
    the last result's unique counts)."""
    _, frames = open_source(str(video))
    sent = (Frame(f.image, f.frame_id, f.capture_timestamp_us) for f in frames if keep[f.frame_id])
    answered, alive, last = {}, {}, None
    for result in client.stream_detect(sent, model, score_threshold=SCORE_THRESHOLD, track=track, timeout=300):
        if result.result is not None:
            answered[result.frame_id] = [(d.track_id, d.box) for d in result.result.detections if d.track_id]
            alive[result.frame_id] = sum(count.active for count in result.tracking.tracks.values())
        last = result.tracking
    unique = {label: count.unique for label, count in last.tracks.items()} if last else {}
    return answered, alive, unique


def present_error(truth: dict, alive: dict[int, int]) -> float:
    """Mean |tracks alive - objects at least MIN_VISIBLE inside the picture| over the answered frames:
    how far "who is here now" is off (a track lingering after its object left counts)."""
    errors = [
        abs(alive[e["frame"]] - int(np.sum(visible_share(e) >= MIN_VISIBLE)))
        for e in truth["frames"]
        if e["frame"] in alive
    ]
    return float(np.mean(errors)) if errors else 0.0


def iou_distances(true_boxes: np.ndarray, found_boxes: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """motmetrics' distance convention, 1 - IoU, NaN (no match) below `min_iou`: what
    `motmetrics.distances.iou_matrix(max_iou=0.5)` computes (it calls np.asfarray, gone in numpy 2)."""
    distance = 1.0 - np.nan_to_num(box_iou(true_boxes, found_boxes).astype(np.float64))
    return np.where(distance <= 1.0 - min_iou, distance, np.nan)


def visible_share(entry: dict) -> np.ndarray:
    """Each ground-truth object's share inside the picture (clips written before the field: all 1)."""
    return np.asarray(entry.get("visible", [1.0] * len(entry["ids"])), dtype=np.float64)


def dont_care(true_boxes: np.ndarray, visible: np.ndarray, found_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth kept [G] bool, tracks counted [F] bool): ground truth under MIN_VISIBLE is left
    out, and so is a track whose box overlaps such an object (IoU >= 0.5) more than any kept one."""
    kept = visible >= MIN_VISIBLE
    counted = np.ones(len(found_boxes), bool)
    if (~kept).any() and len(found_boxes):
        iou = np.nan_to_num(box_iou(true_boxes, found_boxes).astype(np.float64))
        best_ignored = iou[~kept].max(axis=0)
        best_kept = iou[kept].max(axis=0) if kept.any() else np.zeros(len(found_boxes))
        counted = ~((best_ignored >= 0.5) & (best_ignored > best_kept))
    return kept, counted


def score(truth: dict, answered: dict) -> tuple[float, float, int]:
    """MOTA, IDF1, ID switches over the answered frames (py-motmetrics, IoU distance, 0.5)."""
    import motmetrics as mm

    accumulator = mm.MOTAccumulator(auto_id=True)
    for entry in truth["frames"]:
        if entry["frame"] not in answered:
            continue
        true_boxes = np.array(entry["boxes"], np.float32).reshape(-1, 4)
        found = answered[entry["frame"]]
        found_boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for _, b in found], np.float32).reshape(-1, 4)
        kept, counted = dont_care(true_boxes, visible_share(entry), found_boxes)
        distances = iou_distances(true_boxes[kept], found_boxes[counted])
        ids = [identity for identity, keep in zip(entry["ids"], kept) if keep]
        accumulator.update(ids, [track_id for (track_id, _), count in zip(found, counted) if count], distances)
    summary = mm.metrics.create().compute(accumulator, metrics=["mota", "idf1", "num_switches"])
    return float(summary["mota"].iloc[0]), float(summary["idf1"].iloc[0]), int(summary["num_switches"].iloc[0])


def true_unique(truth: dict) -> dict[str, int]:
    seen = {(label, identity) for e in truth["frames"] for label, identity in zip(e["labels"], e["ids"])}
    labels = sorted({label for label, _ in seen})
    return {label: sum(1 for lbl, _ in seen if lbl == label) for label in labels}


def evaluate(client: VisionClient, clips: dict[str, Path], model: str, track: TrackOptions) -> list[ClipScore]:
    scores = []
    for name, video in clips.items():
        truth = json.loads(video.with_suffix(".json").read_text())
        count = len(truth["frames"])
        rng = np.random.default_rng(DROP_SEED)
        dropped = np.ones(count, bool)
        dropped[rng.choice(np.arange(1, count), size=round(DROP_FRACTION * count), replace=False)] = False
        for condition, keep in (("all frames", np.ones(count, bool)), ("30 % dropped", dropped)):
            answered, alive, unique = stream_clip(client, video, model, keep, track)
            mota, idf1, switches = score(truth, answered)
            scores.append(
                ClipScore(
                    name,
                    condition,
                    len(answered),
                    mota,
                    idf1,
                    switches,
                    unique,
                    true_unique(truth),
                    present_error(truth, alive),
                )
            )
    return scores


def heldout_clips(directory: Path) -> dict[str, Path]:
    from examples.make_sample_videos import main as make_videos

    make_videos(["--heldout", str(directory)])
    return {f"held-out {name}": directory / f"{name}.avi" for name in ("attendance", "inventory")}


def markdown(scores: list[ClipScore]) -> str:
    lines = [
        "| clip | frames scored | MOTA | IDF1 | ID switches | unique tracks (truth) | alive vs present |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        unique = ", ".join(f"{label} {s.unique.get(label, 0)} ({n})" for label, n in s.true_unique.items())
        lines.append(
            f"| {s.clip}, {s.condition} | {s.frames} | {s.mota:.3f} | {s.idf1:.3f} | {s.switches} | {unique} "
            f"| {s.present_error:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="a running server (default: start one on a loopback port)")
    parser.add_argument("--model", default="yolo_grid")
    parser.add_argument("--no-heldout", action="store_true", help="only the bundled clips (no export extra needed)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    clips = {"attendance": VIDEOS / "attendance.avi", "inventory": VIDEOS / "inventory.avi"}
    with tempfile.TemporaryDirectory() as scratch:
        if not args.no_heldout:
            clips.update(heldout_clips(Path(scratch)))
        server = None
        if args.host is None:
            from bench.server import REPO_ROOT, served_models

            server = served_models(REPO_ROOT / "model_repo")
        try:
            with VisionClient(args.host or f"127.0.0.1:{server.port}") as client:
                scores = evaluate(client, clips, args.model, TrackOptions())
        finally:
            if server is not None:
                server.stop()
    if args.markdown:
        print(markdown(scores))
    else:
        for s in scores:
            print(
                f"{s.clip:24s} {s.condition:13s} frames {s.frames:3d}  MOTA {s.mota:.3f}  IDF1 {s.idf1:.3f}  "
                f"switches {s.switches}  unique {s.unique} truth {s.true_unique}  alive-present {s.present_error:.2f}"
            )
    failed = [s for s in scores if s.unique != s.true_unique]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
