"""protobuf <-> plain types for StreamDetect tracking (TrackOptions in, TrackUpdate out)."""

from __future__ import annotations

import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.postprocess.counting import CountLine, CountZone
from service.stream_tracking import (
    StreamTracking,
    TrackCounts,
    TrackEvent,
    TrackReport,
    check_geometry_counts,
    check_polygon_size,
    track_settings,
)


def stream_tracking_from_proto(frame: vpb.DetectFrame) -> StreamTracking | None:
    """The stream's tracking state from its first frame's `track` options; None when not asked for."""
    if not frame.HasField("track"):
        return None
    track = frame.track
    check_geometry_counts(len(track.lines), len(track.zones))  # before any geometry is copied
    for index, zone in enumerate(track.zones):
        check_polygon_size(index, len(zone.polygon))

    def optional(name):
        return getattr(track, name) if track.HasField(name) else None

    settings = track_settings(
        tracker=track.tracker,
        high_score=optional("high_score_threshold"),
        low_score=optional("low_score_threshold"),
        match_iou=optional("match_iou_threshold"),
        min_hits=optional("min_hits"),
        max_age=optional("max_age"),
        max_tracks=optional("max_tracks"),
        frame_interval_us=track.frame_interval_us,
        lines=[CountLine(line.name, (line.start.x, line.start.y), (line.end.x, line.end.y)) for line in track.lines],
        zones=[CountZone(zone.name, tuple((p.x, p.y) for p in zone.polygon)) for zone in track.zones],
    )
    return StreamTracking(settings)


def track_result(tracking: StreamTracking, result: vpb.DetectFrameResult, labels) -> None:
    """Feed one stream result (in frame order) to the tracker and fill its track ids and `tracking`."""
    if result.WhichOneof("outcome") != "result":
        report = tracking.skipped()
    else:
        detections = result.result.detections
        # one pass over the messages: box corners, score, class per detection
        rows = np.array(
            [(b.x1, b.y1, b.x2, b.y2, d.score, d.class_index) for d, b in ((d, d.box) for d in detections)], np.float64
        ).reshape(-1, 6)
        report = tracking.answered(
            result.frame_id,
            result.capture_timestamp_us,
            rows[:, :4].astype(np.float32),
            rows[:, 4],
            rows[:, 5].astype(np.int64),
            (result.result.image_width, result.result.image_height) if result.result.image_width else None,
        )
        for detection, track_id in zip(detections, report.track_ids):
            detection.track_id = track_id
    fill_track_update(result.tracking, report, labels)


def _label(labels, class_index: int) -> str:
    return labels[class_index] if 0 <= class_index < len(labels) else str(class_index)


def _fill_events(events, reported: tuple[TrackEvent, ...], labels) -> None:
    for event in reported:
        events.add(
            track_id=event.track_id,
            class_index=event.class_index,
            label=_label(labels, event.class_index),
            first_frame_id=event.first_frame_id,
            last_frame_id=event.last_frame_id,
            first_timestamp_us=event.first_timestamp_us,
            last_timestamp_us=event.last_timestamp_us,
        )


def fill_track_counts(out: vpb.TrackCounts, counts: TrackCounts, labels) -> None:
    """Write `counts` into the (empty) message `out`, in place: no message built and then copied."""
    for c, u, a in counts.tracks:
        out.tracks.add(class_index=c, label=_label(labels, c), unique=u, active=a)
    for name, per_class in counts.lines:
        line = out.lines.add(name=name)
        for c, i, o in per_class:
            line.classes.add(class_index=c, label=_label(labels, c), crossed_in=i, crossed_out=o)
    for name, per_class in counts.zones:
        zone = out.zones.add(name=name)
        for c, e, x, n in per_class:
            zone.classes.add(class_index=c, label=_label(labels, c), entered=e, exited=x, inside=n)


def fill_track_update(out: vpb.TrackUpdate, report: TrackReport, labels) -> None:
    """Write `report` into the result's (empty) `tracking` message, in place; both messages are marked
    present even when empty (a tracked stream's every result carries `tracking` and its `counts`)."""
    out.SetInParent()
    out.counts.SetInParent()
    _fill_events(out.confirmed, report.confirmed, labels)
    _fill_events(out.ended, report.ended, labels)
    fill_track_counts(out.counts, report.counts, labels)
