"""Tracking of a StreamDetect stream, client side: the options sent on the first frame and the
per-frame `TrackUpdate` read back, as small frozen dataclasses (no protobuf leaks to the caller).

The server validates every option (service.stream_tracking); None leaves a field to its default.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.api.convserve.v1 import vision_pb2 as vpb
from service.postprocess.counting import CountLine, CountZone  # the same plain geometry the server counts with


@dataclass(frozen=True)
class TrackOptions:
    tracker: str = ""
    high_score_threshold: float | None = None
    low_score_threshold: float | None = None
    match_iou_threshold: float | None = None
    min_hits: int | None = None
    max_age: int | None = None
    max_tracks: int | None = None
    frame_interval_us: int = 0
    lines: tuple[CountLine, ...] = ()
    zones: tuple[CountZone, ...] = ()

    def to_proto(self) -> vpb.TrackOptions:
        message = vpb.TrackOptions(
            tracker=self.tracker,
            frame_interval_us=self.frame_interval_us,
            lines=[
                vpb.CountLine(
                    name=line.name,
                    start=vpb.Point(x=line.start[0], y=line.start[1]),
                    end=vpb.Point(x=line.end[0], y=line.end[1]),
                )
                for line in self.lines
            ],
            zones=[
                vpb.CountZone(name=zone.name, polygon=[vpb.Point(x=x, y=y) for x, y in zone.polygon])
                for zone in self.zones
            ],
        )
        for name in (
            "high_score_threshold",
            "low_score_threshold",
            "match_iou_threshold",
            "min_hits",
            "max_age",
            "max_tracks",
        ):
            if getattr(self, name) is not None:
                setattr(message, name, getattr(self, name))
        return message


@dataclass(frozen=True)
class TrackEvent:
    track_id: int
    class_index: int
    label: str
    first_frame_id: int
    last_frame_id: int
    first_timestamp_us: int
    last_timestamp_us: int


@dataclass(frozen=True)
class ClassTrackCount:
    class_index: int
    label: str
    unique: int
    active: int


@dataclass(frozen=True)
class LineClassCount:
    class_index: int
    label: str
    crossed_in: int
    crossed_out: int


@dataclass(frozen=True)
class ZoneClassCount:
    class_index: int
    label: str
    entered: int
    exited: int
    inside: int


@dataclass(frozen=True)
class TrackUpdate:
    """Tracks confirmed and ended since the previous result, and the stream's cumulative counts:
    `lines` / `zones` map each name to its per-label counts."""

    confirmed: tuple[TrackEvent, ...]
    ended: tuple[TrackEvent, ...]
    tracks: dict[str, ClassTrackCount]
    lines: dict[str, dict[str, LineClassCount]]
    zones: dict[str, dict[str, ZoneClassCount]]


def _event(message: vpb.TrackEvent) -> TrackEvent:
    return TrackEvent(
        message.track_id,
        message.class_index,
        message.label,
        message.first_frame_id,
        message.last_frame_id,
        message.first_timestamp_us,
        message.last_timestamp_us,
    )


def track_update_from_proto(message: vpb.TrackUpdate) -> TrackUpdate:
    counts = message.counts
    return TrackUpdate(
        confirmed=tuple(map(_event, message.confirmed)),
        ended=tuple(map(_event, message.ended)),
        tracks={c.label: ClassTrackCount(c.class_index, c.label, c.unique, c.active) for c in counts.tracks},
        lines={
            line.name: {
                c.label: LineClassCount(c.class_index, c.label, c.crossed_in, c.crossed_out) for c in line.classes
            }
            for line in counts.lines
        },
        zones={
            zone.name: {
                c.label: ZoneClassCount(c.class_index, c.label, c.entered, c.exited, c.inside) for c in zone.classes
            }
            for zone in counts.zones
        },
    )
