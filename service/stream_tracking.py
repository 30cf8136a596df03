"""One tracked StreamDetect stream: its validated track settings, tracker state, counts and clock.

Created from the stream's first frame and fed every result in frame order (StreamDetect answers
frames in order; frames it dropped or failed still pass through, without detections). The clock
counts camera frames: the steps between two answered frames come from their frame_ids, or from
their capture times when the camera's frame interval is given, so a gap of dropped frames is
predicted through. Memory is bounded: at most `max_tracks` tracks, one small record per confirmed
track alive, counts keyed by class; a gap longer than `max_age` frames (an idle camera) ends
every track, and the whole state goes with the stream.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidArgument
from service.postprocess.counting import CountLine, CountZone, FrameMoves, Tallies
from service.postprocess.tracking import TrackerParams, TrackerState, update

TRACKERS = ("bytetrack",)
MAX_LINES = 16
MAX_ZONES = 16
MAX_VERTICES = 64
MAX_NAME = 64
MAX_TRACKS = 1024


@dataclass(frozen=True)
class TrackSettings:
    tracker: str
    params: TrackerParams
    frame_interval_us: int
    lines: tuple[CountLine, ...]
    zones: tuple[CountZone, ...]


def check_geometry_counts(lines: int, zones: int) -> None:
    """Called before the geometry is copied out of the request."""
    if lines > MAX_LINES:
        raise InvalidArgument(f"track.lines: at most {MAX_LINES} lines, got {lines}")
    if zones > MAX_ZONES:
        raise InvalidArgument(f"track.zones: at most {MAX_ZONES} zones, got {zones}")


def check_polygon_size(index: int, vertices: int) -> None:
    if not 3 <= vertices <= MAX_VERTICES:
        raise InvalidArgument(f"track.zones[{index}].polygon: 3 to {MAX_VERTICES} vertices, got {vertices}")


def _check_range(name: str, value, low, high, *, open_interval: bool = False) -> None:
    inside = low < value < high if open_interval else low <= value <= high
    if not inside or math.isnan(value):  # NaN fails both
        bounds = f"({low}, {high})" if open_interval else f"[{low}, {high}]"
        raise InvalidArgument(f"track.{name} must be in {bounds}, got {value}")


def _check_names(kind: str, names: Sequence[str]) -> None:
    for index, name in enumerate(names):
        if not 1 <= len(name) <= MAX_NAME:
            raise InvalidArgument(f"track.{kind}[{index}].name must have 1 to {MAX_NAME} characters, got {len(name)}")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"track.{kind}: names must be unique, got {list(names)}")


def track_settings(
    *,
    tracker: str = "",
    high_score: float | None = None,
    low_score: float | None = None,
    match_iou: float | None = None,
    min_hits: int | None = None,
    max_age: int | None = None,
    max_tracks: int | None = None,
    frame_interval_us: int = 0,
    lines: Sequence[CountLine] = (),
    zones: Sequence[CountZone] = (),
) -> TrackSettings:
    """Every check of the `track` options, in one place; None takes the TrackerParams default."""
    tracker = tracker or TRACKERS[0]
    if tracker not in TRACKERS:
        raise InvalidArgument(f"track.tracker must be one of {list(TRACKERS)} (or empty), got {tracker!r}")
    defaults = TrackerParams()
    params = TrackerParams(
        high_score=defaults.high_score if high_score is None else high_score,
        low_score=defaults.low_score if low_score is None else low_score,
        match_iou=defaults.match_iou if match_iou is None else match_iou,
        min_hits=defaults.min_hits if min_hits is None else min_hits,
        max_age=defaults.max_age if max_age is None else max_age,
        max_tracks=defaults.max_tracks if max_tracks is None else max_tracks,
    )
    _check_range("high_score_threshold", params.high_score, 0.0, 1.0)
    _check_range("low_score_threshold", params.low_score, 0.0, params.high_score)
    _check_range("match_iou_threshold", params.match_iou, 0.0, 1.0, open_interval=True)
    _check_range("min_hits", params.min_hits, 1, 30)
    _check_range("max_age", params.max_age, 1, 300)
    _check_range("max_tracks", params.max_tracks, 1, MAX_TRACKS)
    if frame_interval_us < 0:
        raise InvalidArgument(f"track.frame_interval_us must be >= 0, got {frame_interval_us}")
    check_geometry_counts(len(lines), len(zones))
    _check_names("lines", [line.name for line in lines])
    _check_names("zones", [zone.name for zone in zones])
    for index, line in enumerate(lines):
        if not np.all(np.isfinite([*line.start, *line.end])) or line.start == line.end:
            raise InvalidArgument(f"track.lines[{index}]: start and end must be distinct finite points")
    for index, zone in enumerate(zones):
        check_polygon_size(index, len(zone.polygon))
        if not np.all(np.isfinite(zone.polygon)):
            raise InvalidArgument(f"track.zones[{index}].polygon: coordinates must be finite")
    return TrackSettings(tracker, params, frame_interval_us, tuple(lines), tuple(zones))


@dataclass(frozen=True)
class TrackEvent:
    track_id: int
    class_index: int
    first_frame_id: int
    last_frame_id: int
    first_timestamp_us: int
    last_timestamp_us: int


@dataclass(frozen=True)
class TrackCounts:
    tracks: tuple[tuple[int, int, int], ...]  # (class, unique, active), class order
    lines: tuple[tuple[str, tuple[tuple[int, int, int], ...]], ...]  # (name, ((class, in, out), ...))
    # (name, ((class, entered, exited, inside), ...))
    zones: tuple[tuple[str, tuple[tuple[int, int, int, int], ...]], ...]


@dataclass(frozen=True)
class TrackReport:
    """What one result of the stream says about tracks."""

    track_ids: tuple[int, ...]  # per detection of the frame, 0 for none
    confirmed: tuple[TrackEvent, ...]
    ended: tuple[TrackEvent, ...]
    counts: TrackCounts


class StreamTracking:
    """Tracker, counts and clock of one stream; feed it every result in frame order."""

    def __init__(self, settings: TrackSettings):
        self.settings = settings
        self._state = TrackerState.empty()
        self._tallies = Tallies(settings.lines, settings.zones)
        self._alive: dict[int, list[int]] = {}  # id -> [class, first frame id, first ts, last frame id, last ts]
        self._recent: deque[tuple[int, int]] = deque(maxlen=settings.params.min_hits)  # answered (frame id, ts)
        self._last: tuple[int, int] | None = None
        self._skipped = 0  # results without detections since the last answered frame

    def _steps(self, frame_id: int, timestamp_us: int) -> int:
        """Camera frames since the previous answered frame, from frame ids (or capture times), and
        at least one more than the frames skipped in between (when ids say nothing); at most max_age + 1."""
        if self._last is None:
            return 1
        interval = self.settings.frame_interval_us
        delta = round((timestamp_us - self._last[1]) / interval) if interval else frame_id - self._last[0]
        return int(min(max(delta, self._skipped + 1), self.settings.params.max_age + 1))

    def answered(
        self,
        frame_id: int,
        timestamp_us: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        view: tuple[float, float] | None = None,
    ) -> TrackReport:
        """An answered frame's detections (boxes [M, 4] x1y1x2y2, scores [M], classes [M]) on an image
        of `view` (width, height) pixels: tracks predicted outside it end."""
        steps = self._steps(frame_id, timestamp_us)
        self._last, self._skipped = (frame_id, timestamp_us), 0
        self._recent.append(self._last)
        first_frame = self._recent[0] if self._state.frames else self._last
        self._state, found = update(self._state, boxes, scores, classes, steps, self.settings.params, view)
        ended = tuple(self._end(track_id) for track_id in found.ended.tolist())
        for track_id, cls in zip(found.confirmed.tolist(), found.confirmed_classes.tolist()):
            self._alive[track_id] = [cls, *first_frame, *self._last]
        self._tallies.add_confirmed(found.confirmed_classes)
        present = self._state.ids > 0
        self._tallies.add_frame(
            FrameMoves(
                found.moved_classes,
                found.moved_from,
                found.moved_to,
                np.isin(found.moved_ids, found.confirmed),
                found.ended_classes,
                found.ended_centres,
                self._state.classes[present],
                self._state.centre[present],
            )
        )
        for track_id in found.moved_ids.tolist():
            self._alive[track_id][3:5] = self._last
        confirmed = tuple(self._event(t, self._alive[t]) for t in found.confirmed.tolist())
        return TrackReport(tuple(found.track_ids.tolist()), confirmed, ended, self.counts())

    def skipped(self) -> TrackReport:
        """A dropped or failed frame: no detections, the counts as they are (its gap is counted by
        the next answered frame's frame_id or capture time, or by this count when ids say nothing)."""
        self._skipped += 1
        return TrackReport((), (), (), self.counts())

    def _end(self, track_id: int) -> TrackEvent:
        return self._event(track_id, self._alive.pop(track_id))

    @staticmethod
    def _event(track_id: int, life: list[int]) -> TrackEvent:
        cls, first_id, first_ts, last_id, last_ts = life
        return TrackEvent(track_id, cls, first_id, last_id, first_ts, last_ts)

    def counts(self) -> TrackCounts:
        state, tallies = self._state, self._tallies
        confirmed = state.ids > 0
        active = np.bincount(state.classes[confirmed], minlength=1) if confirmed.any() else np.zeros(1, np.int64)
        tracks = tuple(
            (cls, n, int(active[cls]) if cls < len(active) else 0) for cls, n in sorted(tallies.unique.items())
        )
        lines = tuple(
            (line.name, tuple((cls, pair[0], pair[1]) for cls, pair in sorted(tallies.crossed[i].items())))
            for i, line in enumerate(tallies.lines)
        )
        zones = tuple(
            (
                zone.name,
                tuple(
                    (cls, pair[0], pair[1], tallies.inside_count(index, cls))
                    for cls, pair in sorted(tallies.zone_moves[index].items())
                ),
            )
            for index, zone in enumerate(tallies.zones)
        )
        return TrackCounts(tracks, lines, zones)
