"""protobuf <-> plain types for StreamDetect tracking (TrackOptions in, TrackUpdate out)."""

from __future__ import annotations

import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.postprocess.counting import CountLine, CountZone
from service.stream_tracking import (StreamTracking, TrackCounts, TrackEvent, TrackReport, check_geometry_counts,
                                     check_polygon_size, track_settings)


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
        tracker=track.tracker, high_score=optional("high_score_threshold"), low_score=optional("low_score_threshold"),
        match_iou=optional("match_iou_threshold"), min_hits=optional("min_hits"), max_age=optional("max_age"),
        max_tracks=optional("max_tracks"), frame_interval_us=track.frame_interval_us,
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
        boxes = np.array([(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in detections], np.float32).reshape(-1, 4)
        scores = np.array([d.score for d in detections], np.float64)
        classes = np.array([d.class_index for d in detections], np.int64)
        report = tracking.answered(result.frame_id, result.capture_timestamp_us, boxes, scores, classes)
        for detection, track_id in zip(detections, report.track_ids):
            detection.track_id = track_id
    result.tracking.CopyFrom(track_update_to_proto(report, labels))


def _label(labels, class_index: int) -> str:
    return labels[class_index] if 0 <= class_index < len(labels) else str(class_index)


def _event(event: TrackEvent, labels) -> vpb.TrackEvent:
    return vpb.TrackEvent(track_id=event.track_id, class_index=event.class_index,
                          label=_label(labels, event.class_index),
                          first_frame_id=event.first_frame_id, last_frame_id=event.last_frame_id,
                          first_timestamp_us=event.first_timestamp_us, last_timestamp_us=event.last_timestamp_us)


def track_counts_to_proto(counts: TrackCounts, labels) -> vpb.TrackCounts:
    return vpb.TrackCounts(
        tracks=[vpb.ClassTrackCount(class_index=c, label=_label(labels, c), unique=u, active=a)
                for c, u, a in counts.tracks],
        lines=[vpb.LineCount(name=name, classes=[
            vpb.LineClassCount(class_index=c, label=_label(labels, c), crossed_in=i, crossed_out=o)
            for c, i, o in per_class])
            for name, per_class in counts.lines],
        zones=[vpb.ZoneCount(name=name, classes=[
            vpb.ZoneClassCount(class_index=c, label=_label(labels, c), entered=e, exited=x, inside=n)
            for c, e, x, n in per_class]) for name, per_class in counts.zones],
    )


def track_update_to_proto(report: TrackReport, labels) -> vpb.TrackUpdate:
    return vpb.TrackUpdate(confirmed=[_event(e, labels) for e in report.confirmed],
                           ended=[_event(e, labels) for e in report.ended],
                           counts=track_counts_to_proto(report.counts, labels))
