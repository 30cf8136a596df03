"""`make soak` / `python -m bench.soak [--minutes N]`: a long mixed load against `convserve serve`.

Why: leaks and slow drifts (a queue that never drains, a cache that only grows, latency creeping
up as something fragments) do not show in a 10-second benchmark. The soak runs the server as a
child process on the bundled model repository (model_repo/gap_cnn; the tiny test classifier when
it is missing, which the report then says) and, for N minutes, sends a paced mix from a few
client threads: Classify with a JPEG, ModelInfer with a preprocessed FP32 tensor, StreamClassify
calls of several frames, and bad requests that must be refused with their proper status. The last
`--hostile-minutes` (default 3) add the attacks of tests/integration/test_hostile.py to the mix
(bench/hostile_requests.py: lying image headers, 16 million empty BYTES elements, 59 MB tensors
of a shape no model takes, fcn8s tensors off its stride or empty, a 10-megapixel image for the
native-resolution segmenter, a 10^6-entry class filter, a 300-character model name, a connection
opening one stream more than its share), each of which must get its precise status while the
good requests keep succeeding.

Verdict: PASS when no good request failed, every bad or hostile request got its expected status,
the server's resident memory (VmRSS from /proc, median of the last minute of the normal phase vs
its first minute after a warm-up) grew by less than 10%, and after the hostile phase it is within
300 MB of that baseline. Latency drift (p50/p99, first vs last minute) is reported, not
gated: on a shared machine other jobs move latency more than the server does.
Results: bench/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

from bench import hostile_requests as hostile
from bench.server import REPO_ROOT, ServerProcess, served_models, system_busy_seconds
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import load_model_config
from service.preprocess import preprocess_encoded
from service.servicers.v2_tensors import append_input

RESULTS = REPO_ROOT / "bench" / "results"
BUNDLED = REPO_ROOT / "model_repo" / "gap_cnn"
MIX = (("classify_jpeg", 0.4), ("v2_tensor", 0.3), ("stream", 0.2), ("bad", 0.1))
HOSTILE_MIX = MIX + (("hostile", 0.1),)
HOSTILE_RSS_ALLOWANCE_MB = 300.0
PEER_STREAMS = 16  # the server's default --max-streams-per-peer
STREAM_FRAMES = 8
WARMUP_S = 15.0
MAX_RSS_GROWTH = 0.10


@dataclass(frozen=True)
class Sample:
    """One call: when it started (s since the soak began), its kind, latency, and status name."""

    t: float
    kind: str
    latency_ms: float
    status: str
    expected: str


@dataclass(frozen=True)
class Workload:
    """Everything the clients send, prepared once: the model, a JPEG, its tensor, the bad requests."""

    model: str
    jpeg: bytes
    tensor: np.ndarray
    input_name: str
    note: str


def choose_model(workdir: Path) -> tuple[Path, str, str]:
    """(repository, model name, note): model_repo as shipped, or the tiny classifier stand-in."""
    if (BUNDLED / "config.yaml").is_file() and any(p.name.isdigit() for p in BUNDLED.iterdir()):
        return REPO_ROOT / "model_repo", "gap_cnn", "bundled model_repo (gap_cnn: 3x64x64 GAP-CNN, 5 classes)"
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from testkit import write_tiny_model  # the shared test helpers' tiny model

    write_tiny_model(workdir, "tiny", max_batch=16, delay_us=1000, queue=256)
    return workdir, "tiny", "STAND-IN: model_repo/gap_cnn is missing; the tiny 1x8x8 3-class test classifier"


def prepare_workload(repo: Path, model: str, note: str) -> Workload:
    config = load_model_config(repo / model / "config.yaml")
    photo = _photo()
    jpeg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    tensor, _ = preprocess_encoded(jpeg, config.preprocessing)
    return Workload(model, jpeg, tensor[None], config.inputs[0].name, note)


def _photo() -> np.ndarray:
    """A real photograph when scikit-image is installed (its chelsea cat), else a textured gradient."""
    try:
        from skimage import data

        return cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR)
    except ImportError:
        y, x = np.mgrid[0:300, 0:450]
        return np.stack([(x + y) % 256, (3 * x) % 256, (5 * y) % 256], axis=-1).astype(np.uint8)


class Client:
    """The calls of the mix, each returning (status name, expected status name)."""

    def __init__(self, channel: grpc.Channel, work: Workload, timeout: float = 30.0):
        self.vision = vpb_grpc.VisionServiceStub(channel)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        self.work = work
        self.timeout = timeout

    def classify_jpeg(self, rng: random.Random) -> tuple[str, str]:
        request = vpb.ClassifyRequest(
            model=vpb.ModelRef(name=self.work.model), images=[vpb.Image(encoded=self.work.jpeg)]
        )
        reply = self.vision.Classify(request, timeout=self.timeout)
        return ("OK" if len(reply.results) == 1 and reply.results[0].predictions else "EMPTY_REPLY"), "OK"

    def v2_tensor(self, rng: random.Random) -> tuple[str, str]:
        request = pb.ModelInferRequest(model_name=self.work.model)
        append_input(request, self.work.input_name, self.work.tensor)
        reply = self.v2.ModelInfer(request, timeout=self.timeout)
        return ("OK" if reply.raw_output_contents else "EMPTY_REPLY"), "OK"

    def stream(self, rng: random.Random) -> tuple[str, str]:
        def frames():
            for index in range(STREAM_FRAMES):
                model = vpb.ModelRef(name=self.work.model) if index == 0 else None
                yield vpb.ClassifyFrame(model=model, frame_id=index, image=vpb.Image(encoded=self.work.jpeg))

        results = list(self.vision.StreamClassify(frames(), timeout=self.timeout))
        good = len(results) == STREAM_FRAMES and all(r.HasField("result") for r in results)
        return ("OK" if good else "FRAME_FAILED"), "OK"

    def bad(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(["garbage", "truncated", "unknown_model", "wrong_shape"])
        try:
            if kind in ("garbage", "truncated", "unknown_model"):
                image = {"garbage": rng.randbytes(300), "truncated": self.work.jpeg[: len(self.work.jpeg) // 2]}.get(
                    kind, self.work.jpeg
                )
                model = "no_such_model" if kind == "unknown_model" else self.work.model
                self.vision.Classify(
                    vpb.ClassifyRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=image)]),
                    timeout=self.timeout,
                )
            else:
                request = pb.ModelInferRequest(model_name=self.work.model)
                append_input(request, self.work.input_name, np.zeros((1, 2, 3), np.float32))
                self.v2.ModelInfer(request, timeout=self.timeout)
        except grpc.RpcError as error:
            return error.code().name, ("NOT_FOUND" if kind == "unknown_model" else "INVALID_ARGUMENT")
        return "OK", ("NOT_FOUND" if kind == "unknown_model" else "INVALID_ARGUMENT")


class HostileClient:
    """The attacks of the hostile phase against the bundled repository, each with its expected status.

    Returns (kind:status, kind:expected), so the report shows which attack got what. Needs fcn8s
    and yolo_grid (the bundled repository); without them only the model-independent attacks run.
    """

    def __init__(self, channel: grpc.Channel, address: str, work: Workload, models: set[str], timeout: float = 30.0):
        self.vision = vpb_grpc.VisionServiceStub(channel)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        self.address, self.work, self.timeout = address, work, timeout
        invalid = "INVALID_ARGUMENT"
        classify, infer = self.vision.Classify, self.v2.ModelInfer
        self.attacks = {  # name: (rpc, request, expected status); requests are built once
            "lying_jpeg": (classify, hostile.classify(work.model, hostile.lying_jpeg()), invalid),
            "lying_tiff": (classify, hostile.classify(work.model, hostile.lying_tiff()), invalid),
            "empty_bytes": (infer, hostile.empty_bytes_elements(work.model), invalid),
            "oversized": (infer, hostile.oversized_tensor(work.model), invalid),
            "long_name": (self.v2.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="m" * 300), invalid),
            "stream_flood": (self.stream_flood, None, "RESOURCE_EXHAUSTED"),
        }
        if "fcn8s" in models:
            self.attacks.update(
                {
                    "fcn8s_off_stride": (infer, hostile.v2_tensor("fcn8s", (1, 3, 40, 40)), invalid),
                    "fcn8s_empty": (infer, hostile.v2_tensor("fcn8s", (1, 3, 0, 0)), invalid),
                    # a bounded success: downscaled into the budget, answered at the full size
                    "fcn8s_10mp": (
                        self.vision.Segment,
                        hostile.segment("fcn8s", hostile.encoded_png(3162, 3162)),
                        "OK",
                    ),
                }
            )
        if "yolo_grid" in models:
            flood = hostile.detect_with_class_filter("yolo_grid", hostile.encoded_png(64, 64))
            self.attacks["class_filter"] = (self.vision.Detect, flood, invalid)

    def hostile(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(sorted(self.attacks))
        rpc, request, expected = self.attacks[kind]
        try:
            rpc(request, timeout=self.timeout)
            status = "OK"
        except grpc.RpcError as error:
            status = error.code().name
        return f"{kind}:{status}", f"{kind}:{expected}"

    def stream_flood(self, _request=None, timeout: float = 30.0) -> None:
        """One connection opens one stream more than its share; the extra one's status is raised."""
        release = threading.Event()
        frame = vpb.ClassifyFrame(model=vpb.ModelRef(name=self.work.model), image=vpb.Image(encoded=self.work.jpeg))

        def frames():
            yield frame
            release.wait(self.timeout)

        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(self.address, options=options) as channel:
            stub = vpb_grpc.VisionServiceStub(channel)
            calls = [stub.StreamClassify(frames(), timeout=timeout) for _ in range(PEER_STREAMS)]
            try:
                for call in calls:
                    next(call)
                extra = stub.StreamClassify(frames(), timeout=timeout)
                next(extra)
            finally:
                release.set()


def run_worker(
    client: Client,
    seed: int,
    started: float,
    until: float,
    interval: float,
    out: list[Sample],
    hostile_client: HostileClient | None = None,
    hostile_from: float = float("inf"),
) -> None:
    """Paced closed loop: one call every `interval` seconds (no catch-up bursts after a slow call);
    from `hostile_from` seconds on, the mix includes the hostile requests."""
    rng = random.Random(seed)
    next_start = time.monotonic()
    while time.monotonic() < until:
        mix = HOSTILE_MIX if hostile_client is not None and time.monotonic() - started >= hostile_from else MIX
        kinds, weights = zip(*mix)
        kind = rng.choices(kinds, weights)[0]
        target = hostile_client if kind == "hostile" else client
        begin = time.monotonic()
        try:
            status, expected = getattr(target, kind)(rng)
        except grpc.RpcError as error:
            status, expected = error.code().name, "OK"
        out.append(Sample(round(begin - started, 3), kind, (time.monotonic() - begin) * 1000, status, expected))
        next_start = max(next_start + interval, time.monotonic())
        time.sleep(max(0.0, next_start - time.monotonic()))


def sample_rss(
    server: ServerProcess, started: float, until: float, out: list[tuple[float, float]], every: float = 2.0
) -> None:
    while time.monotonic() < until:
        out.append((round(time.monotonic() - started, 1), server.rss_mb()))
        time.sleep(every)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None}
    ordered = np.sort(np.asarray(values))
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(ordered, 50)), 2),
        "p99_ms": round(float(np.percentile(ordered, 99)), 2),
    }


def summarise(samples: list[Sample], rss: list[tuple[float, float]], seconds: float, hostile_s: float = 0.0) -> dict:
    """Errors, latency per kind in the first and last minute, RSS growth, and the verdict.

    The RSS growth gate compares the normal phase's first and last minute; the hostile phase (the
    last `hostile_s` seconds) must end within HOSTILE_RSS_ALLOWANCE_MB of that baseline.
    """
    normal_s = seconds - hostile_s
    summary = _summarise_phase(samples, [(t, mb) for t, mb in rss if t < normal_s] or rss[:1], normal_s, seconds)
    if hostile_s:
        after = [mb for t, mb in rss if t >= seconds - min(60.0, hostile_s / 2)] or [mb for _, mb in rss[-1:]]
        during = [mb for t, mb in rss if t >= normal_s] or after
        hostile_rss = {"peak": round(max(during), 1), "final": round(statistics.median(after), 1)}
        summary["hostile"] = {
            "seconds": hostile_s,
            "calls": _count(s.status for s in samples if s.kind == "hostile"),
            "wrong": _count(
                f"{s.status} (expected {s.expected})" for s in samples if s.kind == "hostile" and s.status != s.expected
            ),
            "rss_mb": hostile_rss,
        }
        if hostile_rss["final"] - summary["rss_mb"]["baseline"] > HOSTILE_RSS_ALLOWANCE_MB:
            summary["verdict"] = "FAIL"
    return summary


def _summarise_phase(samples: list[Sample], rss: list[tuple[float, float]], normal_s: float, seconds: float) -> dict:
    window = min(60.0, normal_s / 2)
    first = [s for s in samples if s.t < window]
    last = [s for s in samples if s.t >= seconds - window]
    good = [s for s in samples if s.expected == "OK" and s.kind != "hostile"]
    kinds = [k for k, _ in MIX if k != "bad"]
    latency = {
        kind: {
            "first_minute": percentiles([s.latency_ms for s in first if s.kind == kind and s.status == "OK"]),
            "last_minute": percentiles([s.latency_ms for s in last if s.kind == kind and s.status == "OK"]),
        }
        for kind in kinds
    }
    baseline_samples = [mb for t, mb in rss if min(WARMUP_S, window / 2) <= t < window] or [mb for _, mb in rss[:1]]
    final_samples = [mb for t, mb in rss if t >= normal_s - window] or [mb for _, mb in rss[-1:]]
    baseline, final = statistics.median(baseline_samples), statistics.median(final_samples)
    growth = (final - baseline) / baseline if baseline else 0.0
    good_errors = [s for s in good if s.status != "OK"]
    bad_wrong = [s for s in samples if s.expected != "OK" and s.status != s.expected]
    return {
        "requests": len(samples),
        "good_requests": len(good),
        "bad_requests": len(samples) - len(good),
        "normal_phase_s": normal_s,
        "good_errors": len(good_errors),
        "good_error_statuses": _count(s.status for s in good_errors),
        "bad_with_unexpected_status": len(bad_wrong),
        "bad_statuses": _count(s.status for s in samples if s.expected != "OK" and s.kind != "hostile"),
        "by_kind": _count(s.kind for s in samples),
        "calls_per_s": round(len(samples) / seconds, 2),
        "window_s": window,
        "latency": latency,
        "rss_mb": {
            "baseline": round(baseline, 1),
            "final": round(final, 1),
            "peak": round(max(mb for _, mb in rss), 1),
            "growth_pct": round(100 * growth, 2),
        },
        "verdict": "PASS" if not good_errors and not bad_wrong and growth < MAX_RSS_GROWTH else "FAIL",
    }


def _count(items) -> dict:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def soak(minutes: float, workers: int, rps: float, seed: int, hostile_minutes: float = 0.0) -> dict:
    seconds = (minutes + hostile_minutes) * 60
    with tempfile.TemporaryDirectory() as tmp:
        repo, model, note = choose_model(Path(tmp))
        work = prepare_workload(repo, model, note)
        server = served_models(repo)
        try:
            busy_before, load_before = system_busy_seconds(), os.getloadavg()
            models = {p.name for p in repo.iterdir() if (p / "config.yaml").is_file()}
            samples, rss = run_load(server, work, seconds, workers, rps, seed, hostile_minutes * 60, models)
            busy = system_busy_seconds() - busy_before
        finally:
            server.stop()
    summary = summarise(samples, rss, seconds, hostile_minutes * 60)
    summary["environment"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine_busy_cpu_s": round(busy, 1),
        "model": note,
        "minutes": minutes,
        "hostile_minutes": hostile_minutes,
        "workers": workers,
        "target_rps": rps,
        "seed": seed,
    }
    summary["rss_series_mb"] = rss
    return summary


def run_load(
    server: ServerProcess,
    work: Workload,
    seconds: float,
    workers: int,
    rps: float,
    seed: int,
    hostile_s: float = 0.0,
    models: set[str] = frozenset(),
):
    samples: list[Sample] = []
    rss: list[tuple[float, float]] = []
    options = [("grpc.max_send_message_length", 128 * 2**20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        client = Client(channel, work)
        attacker = HostileClient(channel, server.address, work, models) if hostile_s else None
        started = time.monotonic()
        until = started + seconds
        threads = [
            threading.Thread(
                target=run_worker,
                daemon=True,
                args=(client, seed + i, started, until, workers / rps, samples, attacker, seconds - hostile_s),
            )
            for i in range(workers)
        ]
        threads.append(threading.Thread(target=sample_rss, args=(server, started, until, rss), daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 120)
    return samples, rss


def to_markdown(summary: dict) -> str:
    env, mem = summary["environment"], summary["rss_mb"]
    lines = [
        f"# Soak: {summary['verdict']}",
        "",
        f"{env['minutes']} minutes of mixed load against `convserve serve` ({env['model']}), "
        f"{env['workers']} client threads "
        f"paced at {env['target_rps']} calls/s in total; {env['date']}.",
        "",
        f"Machine: {env['machine']}. Load average {env['load_average_before']} before, "
        f"{env['load_average_after']} after; "
        f"all processes together kept {env['machine_busy_cpu_s']} CPU-seconds busy. "
        "The machine is shared with other jobs "
        "(model training among them), so absolute latencies say more about the machine than about the server.",
        "",
        f"- Calls: {summary['requests']} ({summary['by_kind']}), {summary['calls_per_s']} calls/s achieved; "
        f"good {summary['good_requests']}, bad {summary['bad_requests']}.",
        f"- Good requests that failed: **{summary['good_errors']}** "
        f"(must be 0){_statuses(summary['good_error_statuses'])}.",
        f"- Bad requests refused with an unexpected status: **{summary['bad_with_unexpected_status']}** "
        f"(statuses seen: {summary['bad_statuses']}).",
        f"- Server RSS (VmRSS, sampled every 2 s): median {mem['baseline']} MB "
        f"over the first {summary['window_s']:.0f} s "
        f"(warm-up excluded) -> {mem['final']} MB over the last {summary['window_s']:.0f} s, "
        f"growth **{mem['growth_pct']}%** "
        f"(must be < {100 * MAX_RSS_GROWTH:.0f}%); peak {mem['peak']} MB.",
        "",
        f"Latency of good calls, first vs last {summary['window_s']:.0f} s (a stream call is {STREAM_FRAMES} frames):",
        "",
        "| call | first: n | p50 ms | p99 ms | last: n | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, windows in summary["latency"].items():
        a, b = windows["first_minute"], windows["last_minute"]
        lines.append(
            f"| {kind} | {a['count']} | {a['p50_ms']} | {a['p99_ms']} | {b['count']} | {b['p50_ms']} | {b['p99_ms']} |"
        )
    if "hostile" in summary:
        phase, phase_rss = summary["hostile"], summary["hostile"]["rss_mb"]
        lines += [
            "",
            f"Hostile phase, the last {phase['seconds']:.0f} s: calls by attack and status {phase['calls']}; "
            f"with an unexpected status: **{phase['wrong'] or 'none'}**; server RSS peak {phase_rss['peak']} MB, "
            f"final {phase_rss['final']} MB (must stay within {HOSTILE_RSS_ALLOWANCE_MB:.0f} MB of the "
            "baseline).",
        ]
    command = f"python -m bench.soak --minutes {env['minutes']:g} --hostile-minutes {env['hostile_minutes']:g}"
    lines += ["", f"Reproduce: `{command}` (`make soak` runs 10 + 3 minutes)."]
    return "\n".join(lines) + "\n"


def _statuses(counts: dict) -> str:
    return f"; statuses: {counts}" if counts else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--rps", type=float, default=40.0, help="target calls per second over all threads (default 40)")
    parser.add_argument(
        "--hostile-minutes",
        type=float,
        default=3.0,
        help="then this long with the hostile requests mixed in (default 3; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for soak.json and soak.md")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers <= 0 or args.rps <= 0 or args.hostile_minutes < 0:
        parser.error("--minutes, --workers and --rps must be > 0, --hostile-minutes >= 0")
    summary = soak(args.minutes, args.workers, args.rps, args.seed, args.hostile_minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "soak.md").write_text(to_markdown(summary))
    sys.stdout.write(to_markdown(summary))
    return 0 if summary["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
