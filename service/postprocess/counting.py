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

import numpy as np


@dataclass(frozen=True)
class CountLine:
    name: str
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class CountZone:
    name: str
    polygon: tuple[tuple[float, float], ...]  # >= 3 vertices in order


def side_of_line(points: np.ndarray, start, end) -> np.ndarray:
    """points [N, 2] -> float64 [N]: > 0 on the right of start->end (y down), < 0 left, 0 on the line."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    (ax, ay), (bx, by) = start, end
    return (bx - ax) * (points[:, 1] - ay) - (by - ay) * (points[:, 0] - ax)


def line_crossings(before: np.ndarray, after: np.ndarray, line: CountLine) -> np.ndarray:
    """Steps before [N, 2] -> after [N, 2] against a segment -> int8 [N]: +1 in, -1 out, 0 none."""
    side_before = side_of_line(before, line.start, line.end) > 0
    side_after = side_of_line(after, line.start, line.end) > 0
    # the segment's ends on opposite sides of (or on) the step's own line: the step passes through it
    step_start, step_end = np.asarray(before, np.float64).reshape(-1, 2), np.asarray(after, np.float64).reshape(-1, 2)
    dx, dy = step_end[:, 0] - step_start[:, 0], step_end[:, 1] - step_start[:, 1]
    ends = np.array([line.start, line.end], dtype=np.float64)
    cross = dx[:, None] * (ends[None, :, 1] - step_start[:, None, 1]) - dy[:, None] * (ends[None, :, 0] - step_start[:, None, 0])
    through = cross[:, 0] * cross[:, 1] <= 0
    changed = (side_before != side_after) & through
    return np.where(changed, np.where(side_after, 1, -1), 0).astype(np.int8)


def points_in_polygon(points: np.ndarray, polygon) -> np.ndarray:
    """Even-odd rule: points [N, 2] -> bool [N], inside the polygon [V, 2] (edges count as outside
    or inside consistently, by the half-open crossing test)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    vertices = np.asarray(polygon, dtype=np.float64)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = vertices[:, 0][None, :], vertices[:, 1][None, :]
    x2, y2 = np.roll(vertices[:, 0], -1)[None, :], np.roll(vertices[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at_y = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    crossings = straddles & (x < x_at_y)
    return (crossings.sum(axis=1) % 2).astype(bool)


@dataclass
class Tallies:
    """Cumulative counts of one stream: per class, unique confirmed tracks; per line and class,
    crossings in/out; per zone and class, entries and exits. Keys are class indices, so the size is
    bounded by the classes of the model times the (capped) lines and zones."""

    lines: tuple[CountLine, ...] = ()
    zones: tuple[CountZone, ...] = ()
    unique: dict[int, int] = field(default_factory=dict)
    crossed: list[dict[int, list[int]]] = field(default_factory=list)  # per line: {class: [in, out]}
    zone_moves: list[dict[int, list[int]]] = field(default_factory=list)  # per zone: {class: [entered, exited]}

    def __post_init__(self):
        self.crossed = [{} for _ in self.lines]
        self.zone_moves = [{} for _ in self.zones]

    def add_confirmed(self, classes: np.ndarray) -> None:
        for cls in classes.tolist():
            self.unique[cls] = self.unique.get(cls, 0) + 1

    def add_moves(self, classes: np.ndarray, before: np.ndarray, after: np.ndarray, new: np.ndarray) -> None:
        """Matched confirmed tracks moved before -> after; `new` [P] bool marks the just confirmed
        (they enter a zone they are in, wherever they came from)."""
        for index, line in enumerate(self.lines):
            for cls, direction in zip(classes.tolist(), line_crossings(before, after, line).tolist()):
                if direction:
                    pair = self.crossed[index].setdefault(cls, [0, 0])
                    pair[0 if direction > 0 else 1] += 1
        for index, zone in enumerate(self.zones):
            was_in = points_in_polygon(before, zone.polygon) & ~new
            now_in = points_in_polygon(after, zone.polygon)
            self._zone_add(index, classes[now_in & ~was_in], 0)
            self._zone_add(index, classes[was_in & ~now_in], 1)

    def add_ended(self, classes: np.ndarray, centres: np.ndarray) -> None:
        """Tracks that ended at `centres` exit the zones they were in."""
        for index, zone in enumerate(self.zones):
            self._zone_add(index, classes[points_in_polygon(centres, zone.polygon)], 1)

    def _zone_add(self, zone: int, classes: np.ndarray, column: int) -> None:
        for cls in classes.tolist():
            self.zone_moves[zone].setdefault(cls, [0, 0])[column] += 1
