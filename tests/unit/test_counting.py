"""Counting over tracks (lines crossed each way, zones entered and left) and one stream's tracking
state: its clock from frame ids or capture times, its events, and the validation of track options."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.convserve.v1 import vision_pb2 as vpb
from service.errors import InvalidArgument
from service.postprocess.counting import CountLine, CountZone, FrameMoves, Tallies, line_crossings, points_in_polygon
from service.servicers.track_convert import track_result
from service.stream_tracking import StreamTracking, track_settings

DOOR = CountLine("door", (0.0, 50.0), (100.0, 50.0))  # drawn left to right: "in" is downwards


def test_line_crossed_each_way():
    before = np.array([[50, 40], [50, 60], [50, 40], [50, 40], [150, 40], [50, 50]], float)
    after = np.array([[50, 60], [50, 40], [50, 45], [50, 50], [150, 60], [50, 60]], float)
    # down = in, up = out, no crossing, onto the line (counts as the left side), beyond the segment's end, off the line
    assert line_crossings(before, after, DOOR).tolist() == [1, -1, 0, 0, 0, 1]


def test_line_direction_follows_the_line_orientation():
    reversed_door = CountLine("door", (100.0, 50.0), (0.0, 50.0))
    assert line_crossings(np.array([[50.0, 40.0]]), np.array([[50.0, 60.0]]), reversed_door).tolist() == [-1]
    diagonal = CountLine("d", (0.0, 0.0), (100.0, 100.0))
    # looking from (0, 0) to (100, 100) with y down, the right-hand side is down-left
    assert line_crossings(np.array([[80.0, 20.0]]), np.array([[20.0, 80.0]]), diagonal).tolist() == [1]


def test_points_in_polygon_convex_and_concave():
    square = ((0, 0), (10, 0), (10, 10), (0, 10))
    points = np.array([[5, 5], [15, 5], [-1, 5], [5, 11], [9.9, 9.9]])
    assert points_in_polygon(points, square).tolist() == [True, False, False, False, True]
    u_shape = ((0, 0), (30, 0), (30, 30), (20, 30), (20, 10), (10, 10), (10, 30), (0, 30))
    points = np.array([[5, 20], [15, 20], [25, 20], [15, 5]])
    assert points_in_polygon(points, u_shape).tolist() == [True, False, True, True]
    assert points_in_polygon(np.zeros((0, 2)), square).tolist() == []


def moves(
    classes, before, after, new=None, ended_classes=(), ended_centres=(), present_classes=(), present_centres=()
) -> FrameMoves:
    """A FrameMoves from plain lists (new defaults to none just confirmed)."""
    classes = np.array(classes, np.int64)
    return FrameMoves(
        classes,
        np.array(before, float).reshape(-1, 2),
        np.array(after, float).reshape(-1, 2),
        np.zeros(len(classes), bool) if new is None else np.array(new, bool),
        np.array(ended_classes, np.int64),
        np.array(ended_centres, float).reshape(-1, 2),
        np.array(present_classes, np.int64),
        np.array(present_centres, float).reshape(-1, 2),
    )


def test_zone_entered_left_and_ended_inside():
    zone = CountZone("shelf", ((0, 0), (100, 0), (100, 100), (0, 100)))
    tallies = Tallies((DOOR,), (zone,))
    # a class-3 track walks in, another is confirmed inside (enters), a class-1 track stays outside
    after = [[50, 50], [40, 40], [160, 150]]
    tallies.add_frame(
        moves(
            [3, 3, 1],
            [[150, 50], [40, 40], [150, 150]],
            after,
            [False, True, False],
            present_classes=[3, 3, 1],
            present_centres=after,
        )
    )
    assert tallies.zone_moves[0] == {3: [2, 0]}
    assert (tallies.inside_count(0, 3), tallies.inside_count(0, 1), tallies.inside_count(0, 7)) == (2, 0, 0)
    # the first walks out again, then the one confirmed inside and the class-1 track end
    tallies.add_frame(
        moves(
            [3], [[50, 50]], [[150, 50]], present_classes=[3, 3, 1], present_centres=[[150, 50], [40, 40], [160, 150]]
        )
    )
    assert tallies.zone_moves[0] == {3: [2, 1]} and tallies.inside_count(0, 3) == 1
    tallies.add_frame(
        moves(
            [],
            [],
            [],
            ended_classes=[3, 1],
            ended_centres=[[40, 40], [160, 150]],
            present_classes=[3],
            present_centres=[[150, 50]],
        )
    )
    assert tallies.zone_moves[0] == {3: [2, 2]} and tallies.inside_count(0, 3) == 0
    assert tallies.crossed[0] == {}


def track_stream(settings, frames):
    """frames: (frame id, timestamp, [(x, y, class)]) -> the reports."""
    tracking, reports = StreamTracking(settings), []
    for frame_id, timestamp, objects in frames:
        if objects is None:
            reports.append(tracking.skipped())
            continue
        boxes = np.array([[x, y, x + 20, y + 20] for x, y, _ in objects], np.float32).reshape(-1, 4)
        reports.append(
            tracking.answered(
                frame_id, timestamp, boxes, np.full(len(objects), 0.9), np.array([c for _, _, c in objects], np.int64)
            )
        )
    return reports


def test_stream_counts_crossings_zones_and_unique_tracks():
    settings = track_settings(
        lines=[CountLine("door", (0, 50), (200, 50))],
        zones=[CountZone("left", ((0, 0), (100, 0), (100, 200), (0, 200)))],
    )
    # a class-0 object walks down through the door; a class-2 object walks right out of the zone
    frames = [(t, t * 66_000, [(10, 10 + 8 * t, 0), (60 + 8 * t, 120, 2)]) for t in range(12)]
    reports = track_stream(settings, frames)
    last = reports[-1].counts
    assert last.tracks == ((0, 1, 1), (2, 1, 1))
    assert last.lines == (("door", ((0, 1, 0),)),)
    assert last.zones == (("left", ((0, 1, 0, 1), (2, 1, 1, 0))),)
    assert [e.track_id for e in reports[0].confirmed] == [1, 2]
    assert (reports[0].confirmed[0].first_frame_id, reports[0].confirmed[0].first_timestamp_us) == (0, 0)


def test_clock_comes_from_frame_ids_or_capture_times():
    """A gap in frame ids (frames the client never sent or the server dropped) is predicted
    through: the fast object is found again where it went, not where it was."""
    moving = [(t, t * 50_000, [(10 + 8 * t, 40, 0)]) for t in range(6)] + [(12, 12 * 50_000, [(10 + 8 * 12, 40, 0)])]
    assert track_stream(track_settings(), moving)[-1].track_ids == (1,)
    consecutive = [(index, ts, objects) for index, (_, ts, objects) in enumerate(moving)]  # the gap unknown
    assert track_stream(track_settings(), consecutive)[-1].track_ids == (0,)
    by_time = [(0, ts, objects) for _, ts, objects in moving]  # ids all 0: the capture times count
    assert track_stream(track_settings(frame_interval_us=50_000), by_time)[-1].track_ids == (1,)
    skipped = moving[:6] + [(6, 0, None)] * 6 + moving[6:]  # dropped results in between change nothing
    reports = track_stream(track_settings(), skipped)
    assert reports[-1].track_ids == (1,) and reports[8].counts == reports[5].counts
    no_ids = [(0, 0, objects) for _, _, objects in skipped]  # ids and times say nothing: the skipped results count
    assert track_stream(track_settings(), no_ids)[-1].track_ids == (1,)


def test_tentative_first_frame_is_where_the_track_began():
    settings = track_settings(min_hits=3)
    frames = [(t, 1000 * t, [(10, 10, 0)] + ([(90, 90, 1)] if t >= 2 else [])) for t in range(6)]
    reports = track_stream(settings, frames)
    event = reports[4].confirmed[0]
    assert (event.track_id, event.class_index, event.first_frame_id, event.last_frame_id) == (2, 1, 2, 4)


def test_ended_events_carry_the_last_match():
    frames = [(t, 1000 * t, [(10, 10, 0)]) for t in range(3)] + [(40, 40_000, [])]
    reports = track_stream(track_settings(max_age=5), frames)
    (ended,) = reports[-1].ended
    assert (ended.track_id, ended.first_frame_id, ended.last_frame_id, ended.last_timestamp_us) == (1, 0, 2, 2000)
    assert reports[-1].counts.tracks == ((0, 1, 0),)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"tracker": "sort"}, "track.tracker"),
        ({"high_score": 1.5}, "track.high_score_threshold"),
        ({"high_score": 0.4, "low_score": 0.6}, "track.low_score_threshold"),
        ({"match_iou": 0.0}, "track.match_iou_threshold"),
        ({"match_iou": float("nan")}, "track.match_iou_threshold"),
        ({"min_hits": 0}, "track.min_hits"),
        ({"max_age": 301}, "track.max_age"),
        ({"max_tracks": 5000}, "track.max_tracks"),
        ({"frame_interval_us": -1}, "track.frame_interval_us"),
        ({"lines": [CountLine("a", (0, 0), (0, 0))]}, "track.lines[0]"),
        ({"lines": [CountLine("", (0, 0), (1, 0))]}, "track.lines[0].name"),
        ({"lines": [CountLine("a", (0, 0), (1, 0))] * 2}, "track.lines: names must be unique"),
        ({"lines": [CountLine(str(i), (0, 0), (1, 0)) for i in range(17)]}, "track.lines: at most 16"),
        ({"zones": [CountZone("z", ((0, 0), (1, 1)))]}, "track.zones[0].polygon"),
        ({"zones": [CountZone("z", ((0, 0), (1, 1), (float("inf"), 0)))]}, "track.zones[0].polygon"),
    ],
)
def test_invalid_track_options_name_the_field(options, field):
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        track_settings(**options)


def test_every_tracked_result_carries_tracking_and_counts_even_when_empty():
    tracking = StreamTracking(track_settings())
    empty = vpb.DetectFrameResult(frame_id=0, result=vpb.DetectResult())
    track_result(tracking, empty, ["face"])
    assert empty.HasField("tracking") and empty.tracking.HasField("counts")
    for frame_id in (1, 2):  # a new track after the first frame waits min_hits (2) frames for its id
        one = vpb.DetectFrameResult(
            frame_id=frame_id,
            result=vpb.DetectResult(
                detections=[
                    vpb.Detection(box=vpb.Box(x1=10, y1=10, x2=30, y2=30), class_index=0, label="face", score=0.9)
                ]
            ),
        )
        track_result(tracking, one, ["face"])
    assert one.result.detections[0].track_id == 1
    assert [(e.track_id, e.label, e.first_frame_id, e.last_frame_id) for e in one.tracking.confirmed] == [
        (1, "face", 1, 2)
    ]
    assert [(c.label, c.unique, c.active) for c in one.tracking.counts.tracks] == [("face", 1, 1)]
    dropped = vpb.DetectFrameResult(frame_id=3)
    track_result(tracking, dropped, ["face"])
    assert dropped.HasField("tracking") and dropped.tracking.counts.tracks[0].unique == 1
    assert not dropped.tracking.confirmed and not dropped.tracking.ended
