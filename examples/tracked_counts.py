"""Counts of a tracked camera stream across reconnects, for the camera apps.

The server tracks each StreamDetect call on its own: after a reconnect the new call starts again
with track id 1 and zero counts. `TrackLedger` keeps one segment per call, keys tracks by
(segment, track id), and adds the segments' counts up; `interrupted()` (the stream's
on_interruption callback) starts the next segment. An object seen across a reconnect is counted
once per segment: the price of a server that keeps no state after a call ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.client import TrackUpdate
from service.client.results import FrameResult

TRACK_SCORE_THRESHOLD = 0.1  # weak detections reach the tracker's second, low-score pass
NEW_TRACK_SCORE = 0.5  # the server's default high_score_threshold: a detection this sure starts a track


def counted(detection) -> bool:
    """An object to count in a frame: tracked, or sure enough to start a track (so a new object
    counts on its first frame, before the tracker confirms it); weak untracked boxes are noise."""
    return bool(detection.track_id) or detection.score >= NEW_TRACK_SCORE


def parse_box(text: str) -> tuple[tuple[float, float], ...]:
    """ "x1,y1,x2,y2" -> the rectangle's four corners (a zone polygon)."""
    x1, y1, x2, y2 = (float(v) for v in text.split(","))
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))


def parse_line(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """ "x1,y1,x2,y2" -> (start, end)."""
    x1, y1, x2, y2 = (float(v) for v in text.split(","))
    return (x1, y1), (x2, y2)


@dataclass
class Segment:
    """One server stream: its first and latest tracking update."""

    first: TrackUpdate | None = None
    last: TrackUpdate | None = None


@dataclass
class TrackLedger:
    segments: list[Segment] = field(default_factory=lambda: [Segment()])
    # (segment, track id) -> [label, first capture us, last capture us]
    tracks: dict[tuple[int, int], list] = field(default_factory=dict)

    def interrupted(self, _event=None) -> None:
        self.segments.append(Segment())

    def add(self, result: FrameResult) -> None:
        """Every result of the stream, in order."""
        if result.tracking is None:
            return
        segment = self.segments[-1]
        segment.first = segment.first or result.tracking
        segment.last = result.tracking
        if result.result is None:
            return
        index = len(self.segments) - 1
        for detection in result.result.detections:
            if detection.track_id:
                key, stamp = (index, detection.track_id), result.capture_timestamp_us
                life = self.tracks.setdefault(key, [detection.label, stamp, 0])
                life[2] = result.capture_timestamp_us

    def present_at_least(self, label: str, seconds: float) -> int:
        """Tracks of `label` seen over at least `seconds` of capture time (first to last match)."""
        return sum(1 for name, first, last in self.tracks.values() if name == label and last - first >= seconds * 1e6)

    def line_total(self, line: str, label: str, direction: str) -> int:
        """Crossings of `line` by `label` in `direction` ("crossed_in" / "crossed_out"), all segments."""
        total = 0
        for segment in self.segments:
            count = segment.last.lines.get(line, {}).get(label) if segment.last else None
            total += getattr(count, direction) if count else 0
        return total

    def zone_changes(self, zone: str, label: str) -> tuple[int, int, int]:
        """(added, removed, inside now) of `label` in `zone`: entries after each segment's first
        frame (what was there at the start is the stock, not an addition), exits, tracks inside."""
        added = removed = 0
        for segment in self.segments:
            if segment.last is None:
                continue
            count = segment.last.zones.get(zone, {}).get(label)
            initial = segment.first.zones.get(zone, {}).get(label)
            added += (count.entered if count else 0) - (initial.inside if initial else 0)
            removed += count.exited if count else 0
        inside = self.segments[-1].last.zones.get(zone, {}).get(label) if self.segments[-1].last else None
        return added, removed, inside.inside if inside else 0
