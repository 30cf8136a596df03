"""`make bench` / `python -m bench.run [--quick]`: raw ONNX Runtime vs served, targets, profile, memory.

Everything runs on this one machine, one step at a time: raw ONNX Runtime first (no server
running), then the server as a child process (`convserve serve`) with a client as another child
process for each measurement: Triton's perf_analyzer for V2 tensors, over plain gRPC and over
system shared memory (what users compare servers with), and the project's load tool for JPEG
frames through the vision API's Classify and for V2 streams. Every served figure is printed
beside raw ONNX Runtime measured in the same run, as a ratio. Results go to bench/results/ as
JSON and markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bench.http_rows import http_rows
from bench.load import STREAMED_TENSOR, ServedPoint, run_served
from bench.models import REPO_ROOT, digits_model, export_resnet18
from bench.perf import ensure_perf_analyzer, run_perf_analyzer
from bench.profiling import profile_during
from bench.raw import RawJpegPoint, RawPoint, measure_raw, measure_raw_jpeg
from bench.results import GRPC_REPEAT, evaluate_targets, to_json, to_markdown
from bench.server import ServerProcess, served_models
from service.config import dump_model_config, load_model_config

RAW_BATCHES = (1, 4, 8, 16, 32)
PERF_CONCURRENCY = {"resnet18": (1, 16)}  # other (digits) models: DIGITS_CONCURRENCY
DIGITS_CONCURRENCY = (1, 16, 64)
TRANSPORTS = ("grpc", "shm")  # perf_analyzer --shared-memory none / system
JPEG_CONCURRENCY = (1, 16)
JPEG_HW = (224, 224)  # a camera-sized frame, JPEG-decoded and preprocessed by the server
VISION_JPEG = ("--api", "vision", "--image-size", f"{JPEG_HW[0]}x{JPEG_HW[1]}")
STREAM_CONCURRENCY = (16, 64)
HTTP_CONCURRENCY = 4  # the HTTP rows: tritonclient.http threads, JSON and binary tensors (bench/http_rows.py)


@dataclass(frozen=True)
class Plan:
    mode: str
    raw_seconds: float
    duration: float
    warmup: float
    profile_seconds: float
    memory_seconds: float
    decline_rounds: int  # digits c16/c64 pairs over plain gRPC, the first included (the decline check)


PLANS = {
    "full": Plan(
        "full", raw_seconds=3.0, duration=10.0, warmup=2.0, profile_seconds=12.0, memory_seconds=60.0, decline_rounds=3
    ),
    "quick": Plan(
        "quick", raw_seconds=1.0, duration=3.0, warmup=1.0, profile_seconds=6.0, memory_seconds=20.0, decline_rounds=1
    ),
}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 4 minutes instead of about 10)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory")
    parser.add_argument("--models", default="resnet18,digits", help="comma list: resnet18, digits")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--intra-op-spinning",
        choices=["config", "on", "off"],
        default="config",
        help="override runtime.intra_op_spinning of every benchmarked model (default: as configured)",
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        metavar="RESULTS.json",
        help="re-evaluate the targets of an earlier run's JSON with this code and rewrite its JSON and markdown",
    )
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args.rescore)
    plan = PLANS["quick" if args.quick else "full"]
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    meta = _meta(plan)
    with tempfile.TemporaryDirectory(prefix="convserve-bench-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        models = []
        if "resnet18" in wanted:
            say("exporting resnet18 (torchvision, random weights) to ONNX")
            models.append(export_resnet18(repo))
        if "digits" in wanted:
            models.append(digits_model(repo))
        meta["models"] = {m.name: m.note for m in models}
        if args.intra_op_spinning != "config":
            set_intra_op_spinning(repo, models, args.intra_op_spinning == "on")
        meta["intra_op_spinning"] = args.intra_op_spinning
        raw = {}
        for model in models:
            say(f"raw ONNX Runtime: {model.name}")
            raw[model.name] = measure_raw(repo / model.name, RAW_BATCHES, plan.raw_seconds, model.onnx_path)
        raw_jpeg = {}
        if "resnet18" in raw:
            best = max(p.images_per_s for p in raw["resnet18"])
            raw_jpeg["resnet18"] = measure_raw_jpeg(repo / "resnet18", JPEG_HW, plan.raw_seconds, best)
            per_image = raw_jpeg["resnet18"].preprocess_ms_per_image
            say(f"raw decode + preprocess, resnet18 {JPEG_HW}: {per_image:.2f} ms/image")
        run = _served(repo, models, plan, raw, args.no_profile)
    digits = next((m.name for m in models if m.name != "resnet18"), "digits")
    meta["loadavg_after"] = _loadavg()
    targets = evaluate_targets(raw, run.served, digits, run.memory, plan.warmup, run.adjacent_raw, raw_jpeg)
    data = to_json(meta, raw, run.served, targets, run.profile, run.memory, run.adjacent_raw, raw_jpeg)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench-quick" if args.quick else "bench"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = to_markdown(data)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    say(f"wrote {args.out / stem}.json and .md")
    return 0


def rescore(path: Path) -> int:
    """Targets recomputed from the measurements stored in `path` (no new measurement)."""
    data = json.loads(path.read_text())
    raw = {name: [RawPoint(**p) for p in points] for name, points in data["raw_onnxruntime"].items()}
    adjacent = {key: RawPoint(**p) for key, p in data.get("raw_onnxruntime_after_served", {}).items()}
    raw_jpeg = {
        key: RawJpegPoint(**{**p, "image_hw": tuple(p["image_hw"])}) for key, p in data.get("raw_jpeg", {}).items()
    }
    fields = {f for f in ServedPoint.__dataclass_fields__}
    served = [ServedPoint(**{k: v for k, v in p.items() if k in fields and k != "rss_mb"}) for p in data["served"]]
    memory = ServedPoint(**data["memory"]) if data.get("memory") else None
    digits = next((p.model for p in served if p.model != "resnet18"), "digits")
    targets = evaluate_targets(raw, served, digits, memory, data["meta"]["plan"]["warmup"], adjacent, raw_jpeg)
    data = to_json(data["meta"], raw, served, targets, data["profile"], memory, adjacent, raw_jpeg)
    path.write_text(json.dumps(data, indent=2) + "\n")
    markdown = to_markdown(data)
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


def set_intra_op_spinning(repo: Path, models, spinning: bool) -> None:
    """Rewrite each model's config with `runtime.intra_op_spinning` set, so that the raw and the
    served measurements both use it (A/B runs of the setting, docs/model-config.md)."""
    for model in models:
        path = repo / model.name / "config.yaml"
        config = load_model_config(path)
        runtime = config.runtime.model_copy(update={"intra_op_spinning": spinning})
        dump_model_config(config.model_copy(update={"runtime": runtime}), path)


def window(plan: Plan, raw: list[RawPoint], concurrency: int) -> tuple[float, float]:
    """(measured seconds, warm-up seconds) long enough for several batch runs at this concurrency.

    Why: on a slow or busy machine one ResNet batch can take seconds; a window shorter than a few
    runs measures nothing. Capped at 60 s.
    """
    fitting = [p for p in raw if p.batch >= concurrency] or raw[-1:]
    run_s = min(fitting, key=lambda p: p.batch).latency_ms_p50 / 1000 if fitting else 0.0
    return round(min(60.0, max(plan.duration, 6 * run_s)), 1), round(min(20.0, max(plan.warmup, 2 * run_s)), 1)


@dataclass
class ServedRun:
    served: list[ServedPoint] = field(default_factory=list)
    profile: dict = field(default_factory=lambda: {"available": False, "reason": "not run"})
    memory: ServedPoint | None = None
    adjacent_raw: dict[str, RawPoint] = field(default_factory=dict)  # "resnet18 c16" -> raw re-measured right after


def _served(repo: Path, models, plan: Plan, raw: dict[str, list[RawPoint]], skip_profile: bool) -> ServedRun:
    say("starting the server (convserve serve, gRPC and HTTP)")
    server = served_models(repo, "--http-port", "0")
    run = ServedRun()
    has_perf_analyzer = ensure_perf_analyzer() is not None
    if not has_perf_analyzer:
        say("perf_analyzer is not available (scripts/ensure_perf_analyzer.sh): V2 tensor points skipped")
    try:
        for model in models:
            if has_perf_analyzer:
                _perf_points(server, model, plan, raw, run, repo)
            if model.name == "resnet18":
                for concurrency in JPEG_CONCURRENCY:
                    duration, warmup = window(plan, raw.get(model.name, []), concurrency)
                    _record(run, run_served(server, model.name, "jpeg", concurrency, duration, warmup, VISION_JPEG))
            else:  # per-request overhead without gRPC's per-call cost: the same requests on streams
                for concurrency in STREAM_CONCURRENCY:
                    point = run_served(server, model.name, STREAMED_TENSOR, concurrency, plan.duration, plan.warmup)
                    _record(run, point)
            say(f"{model.name}: HTTP/REST, JSON vs binary tensors (tritonclient.http, concurrency {HTTP_CONCURRENCY})")
            run.served.extend(http_rows(server, model.name, concurrency=HTTP_CONCURRENCY, duration=plan.duration))
        digits = next((m.name for m in models if m.name != "resnet18"), None)
        if digits and not skip_profile and has_perf_analyzer:
            say(f"profiling the server under {digits} perf_analyzer grpc c64 (py-spy)")
            load = lambda: run_perf_analyzer(server, digits, "grpc", 64, plan.profile_seconds + 3)  # noqa: E731
            run.profile, _ = profile_during(server.pid, plan.profile_seconds, server.thread_cpu, load)
        if digits:
            say(f"memory: {digits} tensor c64 for {plan.memory_seconds:.0f} s, RSS sampled every second")
            run.memory = run_served(server, digits, "tensor", 64, plan.memory_seconds, plan.warmup, sample_rss=True)
    finally:
        server.stop()
    return run


def _perf_points(
    server: ServerProcess, model, plan: Plan, raw: dict[str, list[RawPoint]], run: ServedRun, repo: Path
) -> None:
    """perf_analyzer at each concurrency, plain gRPC and shared memory back to back (so the two see
    the same background load); for resnet18, raw ONNX Runtime again right after each pair."""
    best = max((p.images_per_s for p in raw.get(model.name, [])), default=0.0)
    for concurrency in PERF_CONCURRENCY.get(model.name, DIGITS_CONCURRENCY):
        duration, _ = window(plan, raw.get(model.name, []), concurrency)
        latency = concurrency / best if best else 0.0  # what one request takes when the model is the limit
        for transport in TRANSPORTS:
            point = run_perf_analyzer(server, model.name, transport, concurrency, duration, min_window_s=10 * latency)
            _record(run, point)
        if model.name == "resnet18":
            run.adjacent_raw[f"resnet18 c{concurrency}"] = _raw_again(repo, model, raw["resnet18"], concurrency, plan)
    if model.name != "resnet18":
        for _ in range(plan.decline_rounds - 1):  # c16 and c64 again, alternating (bench/results.py says why)
            for concurrency in (16, 64):
                point = run_perf_analyzer(server, model.name, "grpc", concurrency, plan.duration)
                _record(run, dataclasses.replace(point, payload=GRPC_REPEAT))


def _record(run: ServedRun, point: ServedPoint) -> None:
    say(
        f"{point.model} {point.payload} c{point.concurrency}: {point.throughput_rps:.1f} req/s, "
        f"p50 {point.latency_ms.get('p50', float('nan')):.2f} ms, server {point.server_cpu_us_per_request:.0f} us/req, "
        f"others' CPU {point.others_cpu_s:.1f} s, errors {point.errors or '-'}"
    )
    run.served.append(point)


def _raw_again(repo: Path, model, raw: list[RawPoint], concurrency: int, plan: Plan) -> RawPoint:
    """Raw ONNX Runtime re-measured right after a served run (batch 1 for c1, else the best batch).

    Why: on a shared machine the other load changes within minutes; the served/raw targets compare
    against this measurement, taken minutes closer to the served one than the raw table.
    """
    batch = 1 if concurrency == 1 else max(raw, key=lambda p: p.images_per_s).batch
    (point,) = measure_raw(repo / model.name, (batch,), plan.raw_seconds, model.onnx_path)
    say(f"raw again, {model.name} batch {batch}: {point.images_per_s:.1f} img/s, {point.latency_ms_p50:.2f} ms per run")
    return point


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _meta(plan: Plan) -> dict:
    import grpc
    import numpy
    import onnxruntime

    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "mode": plan.mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {cores} cores usable, {platform.system()} {platform.release()}",
        "loadavg_before": _loadavg(),
        "loadavg_after": "",
        "versions": (
            f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"grpcio {grpc.__version__}, numpy {numpy.__version__}"
        ),
        "plan": plan.__dict__,
        "notes": [
            "the load tool (grpc.aio, one process) and the server share this machine's cores; "
            "'others' CPU s' is what other processes burned during each run: "
            "when it is large, absolute numbers are noisy",
            "latency is per request as the client sees it; images/s counts batch items",
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
