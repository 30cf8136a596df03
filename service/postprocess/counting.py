"""Counting over tracks: crossings of a line segment and presence in a polygon zone, as pure numpy
functions, and the per-stream tallies they feed.

A track is a point, the centre of its box at each frame it was matched. A line is crossed when
the step from the previous matched centre to the current one intersects the segment; its direction
is the side the track ends on: side(p) = cross(end - start, p - start) > 0 is the right-hand side
looking from start to end (image coordinates, y down), a crossing onto it is "in", off it "out".
A point exactly on the line counts as the left side, so a track sitting on it never flickers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class CountLine:
    """Crossings of the segment start -> end are counted; `crossed_in` is onto its right-hand side
    looking from start to end (y down: downwards for a line drawn left to right)."""

    name: str
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class CountZone:
    """Entries into and exits from a polygon, in image coordinates (as the detection boxes)."""

    name: str
    polygon: tuple[tuple[float, float], ...]  # >= 3 vertices in order


def side_of_line(points: np.ndarray, start, end) -> np.ndarray:
    """points [N, 2] -> float64 [N]: > 0 on the right of start->end (y down), < 0 left, 0 on the line."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    (ax, ay), (bx, by) = start, end
    return (bx - ax) * (points[:, 1] - ay) - (by - ay) * (points[:, 0] - ax)


def line_crossings(before: np.ndarray, after: np.ndarray, line: CountLine) -> np.ndarray:
    """Steps before [N, 2] -> after [N, 2] against a segment -> int8 [N]: +1 in, -1 out, 0 none."""
    before = np.asarray(before, np.float64).reshape(-1, 2)
    after = np.asarray(after, np.float64).reshape(-1, 2)
    side_after = side_of_line(after, line.start, line.end) > 0
    changed = (side_of_line(before, line.start, line.end) > 0) != side_after
    if changed.any():  # most frames nobody changes side: the through-the-segment test only for those who did
        # the segment's ends on opposite sides of (or on) the step's own line: the step passes through it
        rows = np.flatnonzero(changed)
        ends = np.array([line.start, line.end], dtype=np.float64)
        step = after[rows] - before[rows]
        offset = ends[None, :, :] - before[rows, None, :]  # [K, 2 ends, 2]
        cross = step[:, None, 0] * offset[:, :, 1] - step[:, None, 1] * offset[:, :, 0]
        changed[rows] = cross[:, 0] * cross[:, 1] <= 0
    return np.where(changed, np.where(side_after, 1, -1), 0).astype(np.int8)


@lru_cache(maxsize=64)
def _edges(polygon: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, ...]:
    """A polygon's edges as rows [1, V] (x1, y1, x2, y2, dx/dy): computed once per zone, not per frame."""
    vertices = np.asarray(polygon, dtype=np.float64)
    following = vertices[np.r_[1 : len(vertices), 0]]
    x1, y1, x2, y2 = (a[None, :] for a in (vertices[:, 0], vertices[:, 1], following[:, 0], following[:, 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (x2 - x1) / (y2 - y1)
    return x1, y1, y2, slope


def points_in_polygon(points: np.ndarray, polygon) -> np.ndarray:
    """Even-odd rule: points [N, 2] -> bool [N], inside the polygon ((x, y) vertices in order). The
    crossing test is half-open in y, so a point on an edge is decided the same way every frame."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    x1, y1, y2, slope = _edges(tuple(map(tuple, polygon)))
    x, y = points[:, 0:1], points[:, 1:2]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(invalid="ignore"):
        crossings = straddles & (x < x1 + (y - y1) * slope)
    return (np.count_nonzero(crossings, axis=1) % 2).astype(bool)


@dataclass(frozen=True, eq=False)
class FrameMoves:
    """One frame of a stream's confirmed tracks as counting sees them (points are box centres)."""

    classes: np.ndarray  # int64 [P]: tracks matched on this frame
    before: np.ndarray  # float64 [P, 2]: their centre at the previous match
    after: np.ndarray  # float64 [P, 2]: their centre now
    new: np.ndarray  # bool [P]: confirmed on this frame (they enter a zone they are in, wherever they came from)
    ended_classes: np.ndarray  # int64 [E]: tracks that ended on this frame
    ended_centres: np.ndarray  # float64 [E, 2]: their last centres (they exit the zones they were in)
    present_classes: np.ndarray  # int64 [A]: every confirmed track alive after this frame
    present_centres: np.ndarray  # float64 [A, 2]: at its last matched centre


@dataclass
class Tallies:
    """Cumulative counts of one stream: per class, unique confirmed tracks; per line and class,
    crossings in/out; per zone and class, entries and exits, and the tracks inside now. Keys are
    class indices, so the size is bounded by the classes of the model times the (capped) lines and zones."""

    lines: tuple[CountLine, ...] = ()
    zones: tuple[CountZone, ...] = ()
    unique: dict[int, int] = field(default_factory=dict)
    crossed: list[dict[int, list[int]]] = field(default_factory=list)  # per line: {class: [in, out]}
    zone_moves: list[dict[int, list[int]]] = field(default_factory=list)  # per zone: {class: [entered, exited]}
    inside: list[np.ndarray] = field(default_factory=list)  # per zone: tracks inside now, by class (bincount)

    def __post_init__(self):
        self.crossed = [{} for _ in self.lines]
        self.zone_moves = [{} for _ in self.zones]
        self.inside = [np.zeros(0, np.int64) for _ in self.zones]

    def add_confirmed(self, classes: np.ndarray) -> None:
        for cls in classes.tolist():
            self.unique[cls] = self.unique.get(cls, 0) + 1

    def add_frame(self, moves: FrameMoves) -> None:
        """Line crossings of the matched tracks; zone entries, exits and presence, with one
        point-in-polygon test per zone for all the frame's points at once."""
        for index, line in enumerate(self.lines):
            directions = line_crossings(moves.before, moves.after, line)
            for row in np.flatnonzero(directions).tolist():
                pair = self.crossed[index].setdefault(int(moves.classes[row]), [0, 0])
                pair[0 if directions[row] > 0 else 1] += 1
        if not self.zones:
            return
        points = np.concatenate([moves.before, moves.after, moves.ended_centres, moves.present_centres])
        moved, ended = len(moves.classes), len(moves.ended_classes)
        for index, zone in enumerate(self.zones):
            inside = points_in_polygon(points, zone.polygon)
            was_in, now_in = inside[:moved] & ~moves.new, inside[moved : 2 * moved]
            self._zone_add(index, moves.classes[now_in & ~was_in], 0)
            self._zone_add(index, moves.classes[was_in & ~now_in], 1)
            self._zone_add(index, moves.ended_classes[inside[2 * moved : 2 * moved + ended]], 1)
            self.inside[index] = np.bincount(moves.present_classes[inside[2 * moved + ended :]])

    def inside_count(self, zone: int, cls: int) -> int:
        counts = self.inside[zone]
        return int(counts[cls]) if cls < len(counts) else 0

    def _zone_add(self, zone: int, classes: np.ndarray, column: int) -> None:
        for cls in classes.tolist():
            self.zone_moves[zone].setdefault(cls, [0, 0])[column] += 1
