"""The camera-app examples and the streaming path under them, against real `convserve serve` processes.

- the bundled sample clips are what the seeded generator draws, and their ground truth is exact;
- inventory_camera on the inventory clip: one CSV row per frame in order, per-frame counts equal
  to the ground truth on >= 90 % of frames, items added to and removed from the shelf exactly as
  the ground-truth tracks say (run with the training packages made unimportable: the examples need
  only the serving dependencies);
- attendance_camera: a report per second of video, the people who came in equal to the ground
  truth's, and Explain's CAM overlays for face crops;
- a server stopped gracefully, then one killed, mid-stream: the example reconnects to the server
  restarted on the same port, finishes the clip, and every frame is either answered or reported
  lost (at most the few in flight); a stream to no server gives up after its attempts, and other
  failures (a bad model name, a source that raises) pass straight through;
- a producer far faster than the model: with drop_frames the server skips stale frames and says
  so, answers every frame id once and in order, and its model queue, in-flight count and RSS stay
  bounded; without drop_frames flow control holds the same bound and nothing is dropped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest

from testkit import BUNDLED_REPO, REPO_ROOT, ServerProcess, copy_bundled_model
from examples.attendance_camera import AttendanceLog, WeakestFrame, explain_weakest
from examples.camera_stream import CountSmoother, open_source
from service.client import Frame, NotFound, ReconnectingStream, ReconnectPolicy, Unavailable, VisionClient
from service.client.results import Box, Detection

VIDEOS = REPO_ROOT / "examples" / "videos"
ITEMS = ("circle", "square", "triangle", "star")
QUICK_STOP = ("--shutdown-grace-s", "0", "--drain-timeout-s", "2")
BLOCKED = ("torch", "torchvision", "skimage", "mlxtend", "sklearn")


@pytest.fixture(scope="module")
def server():
    process = ServerProcess(BUNDLED_REPO, *QUICK_STOP)
    process.wait_serving()
    yield process
    process.terminate()


def truth(name: str) -> dict:
    return json.loads((VIDEOS / f"{name}.json").read_text())


def run_example(
    module: str, *args: str, blocked_dir: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if blocked_dir is not None:  # the examples must run with only the serving dependencies
        for name in BLOCKED:
            (blocked_dir / name).mkdir(parents=True, exist_ok=True)
            (blocked_dir / name / "__init__.py").write_text(
                f"raise ImportError('{name} is not a serving dependency')\n"
            )
        env["PYTHONPATH"] = os.pathsep.join([str(blocked_dir), str(REPO_ROOT)])
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def scrape(process: ServerProcess) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5).read().decode()


def metric(process: ServerProcess | str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (from a server, or a scrape's text)."""
    text = process if isinstance(process, str) else scrape(process)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- the bundled clips ---------------------------------------------------------------------------


def test_sample_clips_are_small_readable_and_what_the_generator_draws():
    from examples.make_sample_videos import build_clips, truth_json

    assert sum(p.stat().st_size for p in VIDEOS.iterdir()) < 2 * 1024 * 1024
    for name, (frames, gt, extra) in build_clips().items():
        assert (VIDEOS / f"{name}.json").read_text() == truth_json(name, gt, extra)
        info, decoded = open_source(str(VIDEOS / f"{name}.avi"))
        decoded = list(decoded)
        assert (info.frame_count, len(decoded), info.fps) == (len(frames), len(frames), truth(name)["fps"])
        assert [f.frame_id for f in decoded] == list(range(len(frames)))
        for drawn, frame in zip(frames, decoded):  # the AVI holds these frames, up to JPEG loss
            assert np.abs(drawn[:, :, ::-1].astype(np.float32) - frame.image).mean() < 6.0
        for entry in gt:
            assert len(entry["boxes"]) == len(entry["labels"]) == sum(entry["counts"].values())
            assert all(0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160 for x1, y1, x2, y2 in entry["boxes"])
        assert len({tuple(sorted(e["counts"].items())) for e in gt}) >= 3, "the counts should change during the clip"


def test_directory_source_reads_images_in_name_order(tmp_path):
    _, frames = open_source(str(VIDEOS / "inventory.avi"), max_frames=3)
    for frame in frames:
        cv2.imwrite(str(tmp_path / f"img_{frame.frame_id:03d}.png"), frame.image)
    info, frames = open_source(str(tmp_path), fps=5)
    frames = list(frames)
    assert info.frame_count == 3 and [f.frame_id for f in frames] == [0, 1, 2]
    assert [f.capture_timestamp_us for f in frames] == [0, 200_000, 400_000]


def test_count_smoother_and_attendance_windows():
    smoother = CountSmoother(("face",), window=3)
    assert [smoother.update({"face": n})["face"] for n in (2, 0, 2, 2, 3, 3)] == [2, 1, 2, 2, 2, 3]
    log = AttendanceLog(roster=4, window_s=1.0)
    lines = [log.add(t, n) for t, n in ((0, 3), (500_000, 1), (900_000, 3), (1_000_000, 4), (2_500_000, 2))]
    lines.append(log.close())
    assert [row["present"] for row in log.rows] == [3, 4, 2] and [row["absent"] for row in log.rows] == [1, 0, 2]
    assert lines[3].strip().startswith("0.0-1.0") and "present 3/4" in lines[3]


# --- the examples on the bundled clips ---------------------------------------------------------


def test_inventory_counts_match_ground_truth(server, tmp_path):
    out = tmp_path / "counts.csv"
    done = run_example(
        "examples.inventory_camera",
        "--host",
        server.address,
        "--csv",
        str(out),
        "--quiet",
        "--output",
        str(tmp_path / "annotated.avi"),
        "--truth",
        str(VIDEOS / "inventory.json"),
        blocked_dir=tmp_path / "blocked",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows, frames = read_rows(out), truth("inventory")["frames"]
    assert [int(r["frame_id"]) for r in rows] == list(range(len(frames))), "one row per frame, in frame order"
    assert {r["status"] for r in rows} == {"ok"}
    assert [float(r["capture_s"]) for r in rows] == [round(i / 15, 3) for i in range(len(frames))], (
        "capture times echoed"
    )
    assert all(float(r["server_ms"]) > 0 for r in rows)
    matches = sum(all(int(row[c]) == entry["counts"].get(c, 0) for c in ITEMS) for row, entry in zip(rows, frames))
    print(
        f"inventory counts match ground truth on {matches}/{len(frames)} frames; "
        f"example says: {done.stdout.splitlines()[-1]}"
    )
    assert f"counts match on {matches}/{len(frames)} frames" in done.stdout
    assert cv2.VideoCapture(str(tmp_path / "annotated.avi")).get(cv2.CAP_PROP_FRAME_COUNT) == len(frames)
    assert matches >= 0.9 * len(frames), f"counts match ground truth on only {matches}/{len(frames)} frames"
    for name, (added, removed, on_shelf) in shelf_truth(frames, max_age=15).items():  # --max-age-s 1 at 15 fps
        assert f"shelf {name}: added {added}, removed {removed}, on the shelf {on_shelf}" in done.stdout, done.stdout


def shelf_truth(frames: list[dict], max_age: int) -> dict[str, tuple[int, int, int]]:
    """Per item class from the ground-truth tracks: (added after the first frame, removed early
    enough for the tracker to give up on them within the clip, on the shelf in the last frame)."""
    spans: dict[int, list] = {}
    for entry in frames:
        for label, identity in zip(entry["labels"], entry["ids"]):
            spans.setdefault(identity, [label, entry["frame"], entry["frame"]])[2] = entry["frame"]
    last = len(frames) - 1
    return {
        name: (
            sum(1 for lbl, first, _ in spans.values() if lbl == name and first > 0),
            sum(1 for lbl, _, end in spans.values() if lbl == name and end + max_age + 1 <= last),
            sum(1 for lbl, _, end in spans.values() if lbl == name and end == last),
        )
        for name in ITEMS
    }


def test_attendance_reports_windows(server, tmp_path):
    out = tmp_path / "windows.csv"
    done = run_example(
        "examples.attendance_camera",
        "--host",
        server.address,
        "--csv",
        str(out),
        "--quiet",
        "--crops-dir",
        str(tmp_path / "crops"),
        blocked_dir=tmp_path / "blocked",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_rows(out)
    seconds = len(truth("attendance")["frames"]) / truth("attendance")["fps"]
    assert len(rows) == int(np.ceil(seconds)) and sum(int(r["frames"]) for r in rows) == 75
    roster = truth("attendance")["roster"]
    assert all(int(r["present"]) + int(r["absent"]) == roster for r in rows)
    assert len(re.findall(rf"present \d+/{roster}", done.stdout)) == len(rows)
    frames = truth("attendance")["frames"]
    seen = {}
    for entry in frames:
        for identity in entry["ids"]:
            seen.setdefault(identity, []).append(entry["frame"])
    came_in = sum(1 for f in seen.values() if (f[-1] - f[0]) / truth("attendance")["fps"] >= 0.5)
    assert f"entered: {came_in} people (unique faces tracked for >= 0.5 s)" in done.stdout, done.stdout


def test_attendance_saves_face_crops_with_cam_overlays(server, tmp_path):
    """Explain on the crops of ground-truth faces (independent of how well the detector does)."""
    entry = truth("attendance")["frames"][30]
    _, frames = open_source(str(VIDEOS / "attendance.avi"))
    image = next(f.image for f in frames if f.frame_id == 30)
    faces = tuple(Detection(Box(*box), "face", 0, 0.3) for box in entry["boxes"])
    args = Namespace(crops_dir=tmp_path, cam_model="gap_cnn", face_class="face")
    with VisionClient(server.address) as client:
        lines = explain_weakest(client, WeakestFrame(30, 0.3, image, faces), args)
    assert "UNIMPLEMENTED" not in "\n".join(lines), lines
    assert len(lines) == 1 + len(faces) and all("CAM overlay saved" in line for line in lines[1:])
    for index in range(len(faces)):
        crop = cv2.imread(str(tmp_path / f"frame_30_face_{index}.png"))
        overlay = cv2.imread(str(tmp_path / f"frame_30_face_{index}_cam.jpg"))
        assert crop is not None and overlay is not None and overlay.shape == crop.shape


# --- reconnecting across server restarts -------------------------------------------------------


def wait_for_frames(process: ServerProcess, count: int, timeout: float = 60) -> None:
    give_up = time.monotonic() + timeout
    while metric(process, "convserve_requests_total", method="StreamDetect", code="OK") < count:
        assert time.monotonic() < give_up, f"the server answered fewer than {count} stream frames in {timeout} s"
        time.sleep(0.05)


IN_FLIGHT = 4


@pytest.mark.slow
def test_inventory_survives_a_graceful_restart_and_a_crash(tmp_path):
    repo = tmp_path / "repo"
    copy_bundled_model("yolo_grid", repo)  # the detector alone: quicker restarts
    first = ServerProcess(repo, *QUICK_STOP)
    first.wait_serving()
    servers, port, out = [first], str(first.port), tmp_path / "counts.csv"
    example = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.inventory_camera",
            "--host",
            first.address,
            "--realtime",
            "--fps",
            "10",
            "--max-pending",
            "2",
            "--max-in-flight",
            str(IN_FLIGHT),
            "--quiet",
            "--csv",
            str(out),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_frames(first, 15)
        assert first.terminate() == 0  # graceful: the server ends the stream with UNAVAILABLE
        servers.append(ServerProcess(repo, "--port", port, *QUICK_STOP))
        wait_for_frames(servers[1], 10)
        servers[1].kill()  # a crash: the connection just resets
        servers.append(ServerProcess(repo, "--port", port, *QUICK_STOP))
        printed, _ = example.communicate(timeout=120)
        served_last = metric(servers[2], "convserve_requests_total", method="StreamDetect", code="OK")
    finally:
        example.kill()
        for process in servers:
            process.kill()
    print(printed)
    assert example.returncode == 0, printed
    rows = read_rows(out)
    assert [int(r["frame_id"]) for r in rows] == list(range(75)), "every frame answered or reported lost, in order"
    lost = [int(r["frame_id"]) for r in rows if r["status"] == "lost"]
    assert {r["status"] for r in rows} <= {"ok", "lost"}
    reported = [int(n) for n in re.findall(r"(\d+) frames in flight lost", printed)]
    assert len(reported) == 2 and sum(reported) == len(lost), printed
    assert f"lost in flight {len(lost)} over 2 reconnect(s)" in printed
    assert all(n <= IN_FLIGHT for n in reported), f"more than the frames in flight were lost: {reported}"
    after_crash = int(re.findall(r"connection lost after frame (-?\d+)", printed)[1])
    resumed = sum(1 for r in rows if r["status"] == "ok" and int(r["frame_id"]) > after_crash)
    assert 1 <= resumed <= served_last, "the server restarted after the crash answered the rest of the clip"


def test_reconnecting_stream_gives_up_in_time_and_passes_other_failures_through(server):
    frames = [np.zeros((32, 32, 3), np.uint8)] * 5
    with VisionClient("127.0.0.1:1", retries=0) as client:  # nothing listens on port 1
        stream = ReconnectingStream(
            client,
            lambda batch: client.stream_detect(batch, "yolo_grid"),
            frames,
            ReconnectPolicy(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.1, probe_timeout_s=0.5),
        )
        with pytest.raises(Unavailable):
            list(stream)
    (event,) = stream.interruptions
    assert (event.resumed, event.attempts, event.last_answered_id) == (False, 2, -1)
    assert stream.lost == len(event.lost_frame_ids) <= stream.sent < len(frames) and stream.answered == 0
    with VisionClient(server.address) as client:
        stream = ReconnectingStream(client, lambda batch: client.stream_detect(batch, "no_such_model"), frames)
        with pytest.raises(NotFound):
            list(stream)
        assert stream.interruptions == []

        def camera():
            yield from frames[:3]
            raise OSError("camera unplugged")

        stream, answered = (
            ReconnectingStream(client, lambda batch: client.stream_detect(batch, "yolo_grid"), camera()),
            [],
        )
        with pytest.raises(OSError, match="unplugged"):
            answered.extend(result.frame_id for _, result in stream)
        assert answered == [0, 1, 2] and stream.interruptions == []


# --- back-pressure -----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """Polls the server's model queue depth, in-flight gauge and RSS while a stream runs."""

    def __init__(self, process: ServerProcess):
        self.process, self.samples, self._stop = process, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            text = scrape(self.process)
            self.samples.append(
                (
                    metric(text, "convserve_queue_depth", model="yolo_grid"),
                    metric(text, "convserve_inflight_requests", model="yolo_grid"),
                    rss_mb(self.process.proc.pid),
                )
            )
            time.sleep(0.005)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def peak(self, column: int) -> float:
        return max(sample[column] for sample in self.samples)


def big_frame() -> bytes:
    """One ~250 KB PNG (a sample frame upscaled to 480x480, with fixed noise so it compresses badly)."""
    _, frames = open_source(str(VIDEOS / "inventory.avi"), max_frames=1)
    image = cv2.resize(next(frames).image, (480, 480), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(0).integers(-6, 7, image.shape)
    return cv2.imencode(".png", np.clip(image + noise, 0, 255).astype(np.uint8))[1].tobytes()


@pytest.mark.parametrize("drop_frames, count", [(True, 500), (False, 40)], ids=["drop_frames", "flow_control"])
def test_a_fast_producer_keeps_the_server_bounded(server, drop_frames, count):
    data, bound = big_frame(), 2
    with VisionClient(server.address) as client:
        list(client.stream_detect([data] * 10, "yolo_grid", max_pending=bound, timeout=120))  # warm the allocator
        baseline = rss_mb(server.proc.pid)
        dropped_before = metric(server, "convserve_stream_frames_dropped_total", model="yolo_grid")
        with Sampler(server) as sampler:
            results = list(
                client.stream_detect(
                    (Frame(data, i) for i in range(count)),
                    "yolo_grid",
                    drop_frames=drop_frames,
                    max_pending=bound,
                    timeout=120,
                )
            )
    assert [r.frame_id for r in results] == list(range(count)), "every frame answered once, in order"
    dropped = [r.frame_id for r in results if r.dropped]
    assert all(r.result is not None for r in results if not r.dropped), [r.error for r in results if r.error][:3]
    assert results[-1].frames_dropped == len(dropped)
    assert metric(server, "convserve_stream_frames_dropped_total", model="yolo_grid") - dropped_before == len(dropped)
    assert results[-1].dropped is False, "the newest frame is never the one dropped"
    if drop_frames:
        assert len(dropped) >= count // 2, f"only {len(dropped)} of {count} frames were skipped"
    else:
        assert not dropped
    growth = sampler.peak(2) - baseline
    print(
        f"drop_frames={drop_frames}: {len(dropped)}/{count} dropped, {len(data) * count / 2**20:.0f} MB sent, "
        f"peak queue {sampler.peak(0):.0f}, peak in flight {sampler.peak(1):.0f}, RSS growth {growth:.1f} MB "
        f"over {len(sampler.samples)} samples"
    )
    assert len(sampler.samples) >= 5
    assert sampler.peak(0) <= bound and sampler.peak(1) <= bound
    assert growth < 48, f"server RSS grew {growth:.0f} MB while {len(data) * count / 2**20:.0f} MB were streamed"
