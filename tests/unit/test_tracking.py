"""The ByteTrack-style tracker on hand-made trajectories: crossing paths, occlusion gaps, birth and
death, the low-score pass, classes, the track cap, and the Kalman filter against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from service.postprocess.kalman import cxcywh_to_xyxy, kalman_initiate, kalman_predict, kalman_update, xyxy_to_cxcywh
from service.postprocess.tracking import (
    TrackerParams,
    TrackerState,
    greedy_match,
    update,
)

SIZE = 20.0


def box(x: float, y: float, size: float = SIZE) -> list[float]:
    return [x, y, x + size, y + size]


def run(frames, params=None, steps=None, view=None):
    """frames: per frame a list of (x, y, score, class); returns (state, [FrameTracks])."""
    params = TrackerParams() if params is None else params
    state, found = TrackerState.empty(), []
    for index, objects in enumerate(frames):
        boxes = np.array([box(x, y) for x, y, _, _ in objects], np.float32).reshape(-1, 4)
        scores = np.array([s for _, _, s, _ in objects])
        classes = np.array([c for _, _, _, c in objects], np.int64)
        state, tracks = update(state, boxes, scores, classes, 1 if steps is None else steps[index], params, view)
        found.append(tracks)
    return state, found


def test_two_objects_crossing_keep_their_ids():
    # A moves right, B moves left on nearly the same row: their boxes overlap for several frames
    frames = [[(10 + 4 * t, 50, 0.9, 0), (150 - 4 * t, 54, 0.9, 0)] for t in range(36)]
    _, found = run(frames)
    first = found[0].track_ids.tolist()
    assert sorted(first) == [1, 2]
    for tracks in found:
        assert tracks.track_ids.tolist() == first, "an id switched while the paths crossed"


def test_occlusion_gap_is_predicted_through():
    # the object is missing for 6 frames mid-path and comes back where constant velocity says
    frames = [[(10 + 5 * t, 40, 0.9, 0)] if not 10 <= t < 16 else [] for t in range(25)]
    _, found = run(frames)
    assert {int(t.track_ids[0]) for t in found if len(t.track_ids)} == {1}
    assert all(len(t.ended) == 0 for t in found)


def test_gap_given_as_steps_equals_gap_of_empty_frames():
    frames = [[(10 + 5 * t, 40, 0.9, 0)] for t in range(10)] + [[(10 + 5 * 18, 40, 0.9, 0)]]
    state_steps, found = run(frames, steps=[1] * 10 + [9])
    assert found[-1].track_ids.tolist() == [1]
    empty = [[(10 + 5 * t, 40, 0.9, 0)] for t in range(10)] + [[]] * 8 + [[(10 + 5 * 18, 40, 0.9, 0)]]
    state_empty, _ = run(empty)
    np.testing.assert_allclose(state_steps.mean, state_empty.mean)
    np.testing.assert_allclose(state_steps.cov, state_empty.cov)


def test_without_prediction_a_fast_object_would_be_lost():
    """The same gap, but moving 12 px a frame: the box 7 frames on no longer overlaps where it was
    last seen, only where the filter predicts it."""
    frames = [[(10 + 12 * t, 40, 0.9, 0)] for t in range(8)] + [[]] * 6 + [[(10 + 12 * 14, 40, 0.9, 0)]]
    _, found = run(frames)
    assert found[-1].track_ids.tolist() == [1]


def test_birth_needs_min_hits_and_a_one_frame_false_positive_gets_no_id():
    params = TrackerParams(min_hits=3)
    frames = (
        [[(10, 10, 0.9, 0)]] + [[(10, 10, 0.9, 0), (100, 100, 0.9, 0)]] * 3 + [[(10, 10, 0.9, 0), (60, 60, 0.9, 0)]]
    )
    state, found = run(frames, params)
    assert found[0].track_ids.tolist() == [1] and found[0].confirmed.tolist() == [1]  # first frame: at once
    assert found[1].track_ids.tolist() == [1, 0] and found[2].track_ids.tolist() == [1, 0]
    assert found[3].track_ids.tolist() == [1, 2] and found[3].confirmed.tolist() == [2]
    assert found[4].track_ids.tolist() == [1, 0]  # a new box is tentative again
    assert len(state.ids) == 3  # two confirmed (2 unmatched, waiting) + one tentative


def test_death_after_max_age_and_ids_never_reused():
    params = TrackerParams(max_age=5)
    frames = [[(10, 10, 0.9, 0)]] * 3 + [[]] * 5
    state, found = run(frames, params)
    assert all(len(t.ended) == 0 for t in found) and len(state.ids) == 1  # 5 frames unmatched: still alive
    state, tracks = update(state, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 1, params)
    assert tracks.ended.tolist() == [1] and len(state.ids) == 0
    np.testing.assert_allclose(tracks.ended_centres, [[20, 20]])
    for _ in range(params.min_hits):
        state, tracks = update(state, np.array([box(10, 10)], np.float32), np.array([0.9]), np.array([0]), 1, params)
    assert tracks.track_ids.tolist() == [2]


def test_a_track_that_walked_out_of_the_picture_ends_and_the_next_one_in_gets_a_new_id():
    """An object leaves through the right border at 4 px per frame (the detector loses it when about
    half is outside); another enters through the same border soon after, moving the other way."""
    leaving = [[(60 + 4 * i, 40, 0.9, 0)] for i in range(8)]  # last seen at x 88..108: centre 98 < 100
    gone = [[]] * 3
    entering = [[(100 - 2 * i, 40, 0.9, 0)] for i in range(4)]
    _, found = run(leaving + gone + entering, view=(100.0, 100.0))
    ended_on = [index for index, t in enumerate(found) if len(t.ended)]
    assert ended_on == [8] and found[8].ended.tolist() == [1]  # the first frame its prediction is outside
    assert found[-1].track_ids.tolist() == [2]
    # without the view the track lingers (max_age 30) and nothing ends within the clip
    _, blind = run(leaving + gone + entering)
    assert not any(len(t.ended) for t in blind)
    # a track predicted inside the picture, and one matched at the border, stay
    _, inside = run([[(40, 40, 0.9, 0)]] * 3 + [[]] * 3, view=(100.0, 100.0))
    assert not any(len(t.ended) for t in inside)


def test_long_gap_ends_every_track_and_prediction_is_capped():
    params = TrackerParams(max_age=10)
    state, _ = run([[(10, 10, 0.9, 0), (80, 10, 0.9, 1)]] * 3, params)
    state, tracks = update(state, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 10**12, params)
    assert sorted(tracks.ended.tolist()) == [1, 2] and len(state.ids) == 0


def test_low_score_detections_extend_tracks_but_start_none():
    frames = [[(10 + 3 * t, 10, 0.9 if t < 5 else 0.3, 0)] for t in range(12)]
    _, found = run(frames)
    assert all(t.track_ids.tolist() == [1] for t in found)
    _, found = run([[(10, 10, 0.3, 0)]] * 5)
    assert all(t.track_ids.tolist() == [0] for t in found)
    _, found = run([[(10, 10, 0.9, 0)]] * 3 + [[(10, 10, 0.05, 0)]])  # under low_score: ignored
    assert found[-1].track_ids.tolist() == [0]


def test_classes_never_share_a_track():
    frames = [[(10, 10, 0.9, 0)]] * 3 + [[(10, 10, 0.9, 1)]] * 3
    _, found = run(frames)
    assert found[2].track_ids.tolist() == [1]
    assert found[4].track_ids.tolist() == [2]


def test_track_cap_keeps_the_most_confident_new_detections():
    params = TrackerParams(max_tracks=3)
    objects = [(10 + 30 * i, 10, 0.6 + 0.05 * i, 0) for i in range(5)]
    state, found = run([objects] * 4, params)
    assert len(state.ids) == 3
    assert found[-1].track_ids.tolist() == [0, 0, 3, 2, 1]  # ids given in score order


def test_greedy_match_takes_the_best_pairs_first():
    iou = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.0, 0.0, 0.1]])
    rows, cols = greedy_match(iou, 0.2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0)]
    rows, cols = greedy_match(iou, 0.05)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (2, 2)]
    # no row or column wanted twice: every pair is kept, still highest IoU first
    rows, cols = greedy_match(np.array([[0.3, 0.0], [0.0, 0.9]]), 0.2)
    assert (rows.tolist(), cols.tolist()) == ([1, 0], [1, 0])
    assert greedy_match(np.zeros((0, 3)), 0.2)[0].tolist() == []


def test_box_conversions_round_trip():
    boxes = np.array([[1, 2, 11, 32], [5, 5, 6, 9]], np.float64)
    np.testing.assert_allclose(xyxy_to_cxcywh(boxes), [[6, 17, 10, 30], [5.5, 7, 1, 4]])
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_kalman_matches_the_textbook_equations():
    """Predict and update (twice: 3 steps, update, 2 steps, update) against the plain matrix
    formulas with a full inverse of S, one track at a time."""
    rng = np.random.default_rng(0)
    measured = np.array([[50.0, 40.0, 20.0, 30.0], [10.0, 90.0, 8.0, 12.0]])
    observations = [measured + rng.normal(0, 1, measured.shape), measured + 3 + rng.normal(0, 1, measured.shape)]
    mean, cov = kalman_initiate(measured)
    for steps, observation in zip((3, 2), observations):
        mean, cov = kalman_update(*kalman_predict(mean, cov, steps), observation)
    transition, measure = np.eye(8) + np.eye(8, k=4), np.eye(4, 8)
    for n in range(2):
        m, p = kalman_initiate(measured[n : n + 1])
        m, p = m[0], p[0]
        for steps, observation in zip((3, 2), observations):
            for _ in range(steps):
                w, h = m[2], m[3]
                q = np.diag(np.square([w / 20, h / 20, w / 20, h / 20, w / 160, h / 160, w / 160, h / 160]))
                m, p = transition @ m, transition @ p @ transition.T + q
            r = np.diag(np.square([m[2] / 20, m[3] / 20, m[2] / 20, m[3] / 20]))
            gain = p @ measure.T @ np.linalg.inv(measure @ p @ measure.T + r)
            m, p = m + gain @ (observation[n] - measure @ m), (np.eye(8) - gain @ measure) @ p
        np.testing.assert_allclose(mean[n], m, rtol=1e-9)
        np.testing.assert_allclose(cov[n], p, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("count", [0, 1])
def test_empty_frames_and_empty_state(count):
    state = TrackerState.empty()
    boxes = np.array([box(0, 0)] * count, np.float32).reshape(-1, 4)
    state, tracks = update(state, boxes, np.full(count, 0.9), np.zeros(count, np.int64), 1, TrackerParams())
    assert tracks.track_ids.tolist() == [1] * count and len(state.ids) == count
