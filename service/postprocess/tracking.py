"""Multi-object tracking in the ByteTrack style, as pure numpy functions over one stream's state.

Each track is a constant-velocity Kalman filter over its box centre and size, state
(cx, cy, w, h, vcx, vcy, vw, vh) in pixels and pixels per frame, with noise proportional to the box
size (the ByteTrack / BoT-SORT weights 1/20 for position, 1/160 for velocity). One `update` per
answered frame:
1. every track is predicted `steps` frames ahead (the frames between two answered ones: dropped
   frames are predicted through, not forgotten); confirmed tracks unmatched for more than `max_age`
   frames end, tentative ones unmatched on a frame are discarded;
2. the confident detections (score >= high_score) are matched to all tracks by IoU of the predicted
   boxes (greedy, highest IoU first, same class only, IoU >= match_iou);
3. the weak detections (low_score <= score < high_score) are matched to the confirmed tracks still
   unmatched, with the stricter IoU >= max(match_iou, LOW_PASS_IOU): a weak box only extends a track
   (an occluded, blurred object) and never starts one;
4. a confirmed track left unmatched whose predicted box centre is outside the image (`view`) ends
   now: the object walked out of the picture, and waiting `max_age` frames would only let the next
   object entering through the same border take its id;
5. unmatched confident detections start tentative tracks (up to max_tracks alive); a tentative
   track matched on `min_hits` frames is confirmed and gets the next id. On the stream's first
   frame tracks are confirmed at once (there is no earlier frame to wait for).
State size is bounded by max_tracks rows; ids are never reused within a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.postprocess.kalman import (
    cxcywh_to_xyxy,
    kalman_initiate,
    kalman_predict,
    kalman_update,
    xyxy_to_cxcywh,
)
from service.postprocess.nms import box_iou

LOW_PASS_IOU = 0.5


@dataclass(frozen=True)
class TrackerParams:
    """Tracker rules (validated by service.stream_tracking.track_settings)."""

    high_score: float = 0.5
    low_score: float = 0.1
    match_iou: float = 0.2
    min_hits: int = 2
    max_age: int = 30
    max_tracks: int = 256


@dataclass(frozen=True, eq=False)
class TrackerState:
    """All tracks of one stream, one row each (N rows), and the id counter."""

    ids: np.ndarray  # int64 [N]; 0 while tentative
    classes: np.ndarray  # int64 [N]
    mean: np.ndarray  # float64 [N, 8]
    cov: np.ndarray  # float64 [N, 8, 8]
    hits: np.ndarray  # int64 [N]: frames matched
    misses: np.ndarray  # int64 [N]: frames since the last match
    centre: np.ndarray  # float64 [N, 2]: box centre at the last match
    next_id: int = 1
    frames: int = 0  # answered frames seen

    @staticmethod
    def empty() -> TrackerState:
        return TrackerState(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, 8)),
            np.zeros((0, 8, 8)),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, 2)),
        )

    def take(self, rows: np.ndarray) -> TrackerState:
        """The state restricted to `rows` (an index or bool array)."""
        return TrackerState(
            self.ids[rows],
            self.classes[rows],
            self.mean[rows],
            self.cov[rows],
            self.hits[rows],
            self.misses[rows],
            self.centre[rows],
            self.next_id,
            self.frames,
        )


@dataclass(frozen=True, eq=False)
class FrameTracks:
    """What one update found, for the caller's counting and reporting."""

    track_ids: np.ndarray  # int64 [M]: per input detection, its confirmed track's id, 0 for none
    confirmed: np.ndarray  # int64 [K]: ids confirmed on this frame
    confirmed_classes: np.ndarray  # int64 [K]
    ended: np.ndarray  # int64 [E]: ids that ended on this frame
    ended_classes: np.ndarray  # int64 [E]
    ended_centres: np.ndarray  # float64 [E, 2]: their last matched centres
    moved_ids: np.ndarray  # int64 [P]: confirmed tracks matched on this frame
    moved_classes: np.ndarray  # int64 [P]
    moved_from: np.ndarray  # float64 [P, 2]: their centre at the previous match
    moved_to: np.ndarray  # float64 [P, 2]: their centre now


def greedy_match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row, col) of an [R, C] IoU matrix, highest IoU first, each row and column at most once,
    IoU >= threshold -> (rows int64 [P], cols int64 [P])."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    rows, cols = rows[order].astype(np.int64), cols[order].astype(np.int64)
    if len(rows) == 0 or (np.bincount(rows).max() == 1 and np.bincount(cols).max() == 1):
        return rows, cols  # no row or column wanted twice: every candidate pair is kept (the usual frame)
    used_rows, used_cols, kept = set(), set(), []
    for index, (row, col) in enumerate(zip(rows.tolist(), cols.tolist())):
        if row not in used_rows and col not in used_cols:
            used_rows.add(row)
            used_cols.add(col)
            kept.append(index)
    kept = np.asarray(kept, dtype=np.int64)
    return rows[kept], cols[kept]


def _class_iou(tracks: TrackerState, boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[N tracks, M detections] IoU of the predicted boxes against the detections; 0 across classes and
    where both boxes are empty (box_iou's NaN). One matrix serves both passes."""
    iou = box_iou(cxcywh_to_xyxy(tracks.mean[:, :4]), boxes)
    return np.where((tracks.classes[:, None] == classes[None, :]) & (iou > 0), iou, 0.0)


def _associate(state: TrackerState, boxes, scores, classes, params: TrackerParams) -> tuple[np.ndarray, np.ndarray]:
    """Both passes -> (track rows, detection indices) of the matches."""
    high = np.flatnonzero(scores >= params.high_score)
    low = np.flatnonzero((scores >= params.low_score) & (scores < params.high_score))
    iou = _class_iou(state, boxes, classes)
    rows_1, cols_1 = greedy_match(iou[:, high], params.match_iou)
    unmatched = state.ids > 0
    unmatched[rows_1] = False
    free = np.flatnonzero(unmatched)
    low_iou = max(params.match_iou, LOW_PASS_IOU)
    rows_2, cols_2 = greedy_match(iou[np.ix_(free, low)], low_iou)
    return np.concatenate([rows_1, free[rows_2]]), np.concatenate([high[cols_1], low[cols_2]])


def update(
    state: TrackerState,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    steps: int,
    params: TrackerParams,
    view: tuple[float, float] | None = None,
) -> tuple[TrackerState, FrameTracks]:
    """One answered frame: detections boxes [M, 4] x1y1x2y2, scores [M], classes [M], `steps` >= 1
    frames after the previous answered frame, `view` the image's (width, height) (None: unknown,
    tracks then end by max_age only) -> (new state, what happened on this frame)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores, classes = np.asarray(scores, dtype=np.float64), np.asarray(classes, dtype=np.int64)
    steps = min(steps, params.max_age + 1)  # by then every track has ended: predicting further changes nothing
    mean, cov = kalman_predict(state.mean, state.cov, steps)
    # the working copy of the tracks, modified in place below (the previous state stays as it was)
    tracks = TrackerState(
        state.ids,
        state.classes,
        mean,
        cov,
        state.hits.copy(),
        state.misses + steps,
        state.centre.copy(),
        state.next_id,
        state.frames,
    )
    alive = tracks.misses <= params.max_age
    ended_rows = np.flatnonzero(~alive & (tracks.ids > 0))
    ended = (tracks.ids[ended_rows], tracks.classes[ended_rows], tracks.centre[ended_rows])
    if not alive.all():
        tracks = tracks.take(alive)

    rows, dets = _associate(tracks, boxes, scores, classes, params)
    measured = xyxy_to_cxcywh(boxes[dets])
    tracks.mean[rows], tracks.cov[rows] = kalman_update(tracks.mean[rows], tracks.cov[rows], measured)
    previous = tracks.centre[rows]
    tracks.centre[rows] = measured[:, :2]
    tracks.hits[rows] += 1
    tracks.misses[rows] = 0
    # tentative tracks not matched now are dropped, confirmed ones wait up to max_age frames unless
    # their prediction has left the picture
    keep = (tracks.ids > 0) | (tracks.misses == 0)
    if view is not None:
        centre = tracks.mean[:, :2]
        outside = (centre[:, 0] < 0) | (centre[:, 0] >= view[0]) | (centre[:, 1] < 0) | (centre[:, 1] >= view[1])
        left = outside & (tracks.misses > 0) & (tracks.ids > 0)
        if left.any():
            ended = tuple(
                np.concatenate([e, x[left]]) for e, x in zip(ended, (tracks.ids, tracks.classes, tracks.centre))
            )
            keep &= ~left
    if not keep.all():
        rows = (np.cumsum(keep) - 1)[rows]
        tracks = tracks.take(keep)

    tracks, rows, dets = _birth(tracks, rows, dets, boxes, scores, classes, params)
    promote = (tracks.ids == 0) & ((tracks.hits >= params.min_hits) | (tracks.frames == 0))
    confirmed = np.arange(tracks.next_id, tracks.next_id + int(promote.sum()), dtype=np.int64)
    ids = tracks.ids.copy()
    ids[promote] = confirmed
    state = TrackerState(
        ids,
        tracks.classes,
        tracks.mean,
        tracks.cov,
        tracks.hits,
        tracks.misses,
        tracks.centre,
        tracks.next_id + len(confirmed),
        tracks.frames + 1,
    )

    matched_ids = ids[rows]
    track_ids = np.zeros(len(boxes), dtype=np.int64)
    track_ids[dets] = matched_ids
    moved = matched_ids > 0
    moved_from = np.concatenate([previous, state.centre[rows[len(previous) :]]])[moved]
    return state, FrameTracks(
        track_ids,
        confirmed,
        state.classes[promote],
        *ended,
        matched_ids[moved],
        state.classes[rows][moved],
        moved_from,
        state.centre[rows][moved],
    )


def _birth(state: TrackerState, rows, dets, boxes, scores, classes, params: TrackerParams):
    """Tentative tracks from the unmatched confident detections, highest score first, within max_tracks.
    Returns the state and the (row, detection) pairs extended by the new rows."""
    candidates = scores >= params.high_score
    candidates[dets] = False
    unmatched = np.flatnonzero(candidates)
    unmatched = unmatched[np.argsort(-scores[unmatched], kind="stable")][: max(0, params.max_tracks - len(state.ids))]
    if len(unmatched) == 0:
        return state, rows, dets
    measured = xyxy_to_cxcywh(boxes[unmatched])
    mean, cov = kalman_initiate(measured)
    count = len(unmatched)
    grown = TrackerState(
        np.concatenate([state.ids, np.zeros(count, np.int64)]),
        np.concatenate([state.classes, classes[unmatched]]),
        np.concatenate([state.mean, mean]),
        np.concatenate([state.cov, cov]),
        np.concatenate([state.hits, np.ones(count, np.int64)]),
        np.concatenate([state.misses, np.zeros(count, np.int64)]),
        np.concatenate([state.centre, measured[:, :2]]),
        state.next_id,
        state.frames,
    )
    new_rows = np.arange(len(state.ids), len(state.ids) + count)
    return grown, np.concatenate([rows, new_rows]), np.concatenate([dets, unmatched])
