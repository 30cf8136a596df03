"""One served measurement with Triton's perf_analyzer as the client: V2 tensors over plain gRPC or
over system shared memory, the way users compare inference servers.

perf_analyzer (scripts/ensure_perf_analyzer.sh fetches it) sends batch-1 FP32 requests from its
own threads, closed loop, and reports throughput and latency percentiles of its stable
windows. The server's CPU per request is its CPU seconds during the run over the requests it
answered (V2 ModelStatistics' success count before and after, warm-up and unstable windows
included), as in bench/load.py.
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from bench.load import ServedPoint
from bench.server import REPO_ROOT, ServerProcess, system_busy_seconds

PERF_ANALYZER = Path(
    os.environ.get("PERF_ANALYZER_BIN", Path.home() / ".cache" / "convserve" / "perf_analyzer" / "perf_analyzer")
)
# payload name in the results -> (what it sends over, in words; perf_analyzer's flags for it)
TRANSPORTS = {
    "grpc": ("gRPC", ("--shared-memory", "none")),
    "shm": ("system shared memory", ("--shared-memory", "system")),
    "stream": ("ModelStreamInfer streams (one per concurrent caller)", ("--shared-memory", "none", "--streaming")),
}


def perf_payload(transport: str) -> str:
    return f"perf_analyzer {transport}"


def ensure_perf_analyzer() -> Path | None:
    """The binary, fetched by the project's setup script when missing; None when it cannot be had."""
    if not PERF_ANALYZER.exists():
        subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "ensure_perf_analyzer.sh")],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    return PERF_ANALYZER if PERF_ANALYZER.exists() else None


def answered(server: ServerProcess, model: str) -> int:
    with triton.InferenceServerClient(server.address) as client:
        stats = client.get_inference_statistics(model)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def write_input_data(server: ServerProcess, model: str, directory: Path) -> None:
    """One file per input, named after it, holding one batch item of standard-normal float32: the
    data raw ONNX Runtime runs in bench/raw.py. Why not perf_analyzer's default random bytes: as
    floats they hold NaN, Inf and denormals, which no camera sends and which slow CPU arithmetic."""
    with triton.InferenceServerClient(server.address) as client:
        metadata = client.get_model_metadata(model)
    rng = np.random.default_rng(0)
    for tensor in metadata.inputs:
        if tensor.datatype != "FP32":
            raise RuntimeError(f"{model}: input '{tensor.name}' is {tensor.datatype}; this benchmark sends FP32")
        dims = [int(d) for d in tensor.shape[1:]]
        (directory / tensor.name).write_bytes(rng.standard_normal(dims).astype("<f4").tobytes())


def run_perf_analyzer(
    server: ServerProcess, model: str, transport: str, concurrency: int, duration: float, min_window_s: float = 1.0
) -> ServedPoint:
    """perf_analyzer at one concurrency: three windows of max(duration / 3, min_window_s) each,
    reported whatever their spread (a stability percentage of 1000: on a shared machine
    perf_analyzer's default 10 % would fail runs instead of measuring them; the spread shows in the
    percentiles). A window should hold many request latencies, hence `min_window_s`."""
    binary = ensure_perf_analyzer()
    if binary is None:
        raise RuntimeError(f"perf_analyzer is not available at {PERF_ANALYZER} (scripts/ensure_perf_analyzer.sh)")
    window_ms = int(1000 * max(1.0, min_window_s, duration / 3))
    with tempfile.TemporaryDirectory() as tmp:
        report, data = Path(tmp) / "perf.csv", Path(tmp) / "data"
        data.mkdir()
        write_input_data(server, model, data)
        command = [
            str(binary),
            "-m",
            model,
            "-i",
            "grpc",
            "-u",
            server.address,
            "--concurrency-range",
            str(concurrency),
            "--measurement-interval",
            str(window_ms),
            "--stability-percentage",
            "1000",
            "--max-trials",
            "3",
            "--input-data",
            str(data),
            *TRANSPORTS[transport][1],
            "-f",
            str(report),
        ]
        before, cpu_before, busy_before = answered(server, model), server.cpu_seconds(), system_busy_seconds()
        client_before = _children_cpu()
        done = subprocess.run(command, capture_output=True, text=True, timeout=4 * window_ms / 1000 * 3 + 120)
        server_cpu, busy = server.cpu_seconds() - cpu_before, system_busy_seconds() - busy_before
        client_cpu = _children_cpu() - client_before
        total = max(1, answered(server, model) - before)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        (row,) = list(csv.DictReader(report.open()))
    throughput = float(row["Inferences/Second"])
    latency = {name: round(float(row[f"{name} latency"]) / 1000, 3) for name in ("p50", "p90", "p99")}
    return ServedPoint(
        model=model,
        payload=perf_payload(transport),
        concurrency=concurrency,
        throughput_rps=throughput,
        images_per_s=throughput,
        latency_ms=latency,
        errors={},
        requests_total=total,
        server_cpu_us_per_request=round(1e6 * server_cpu / total, 1),
        client_cpu_us_per_request=round(1e6 * client_cpu / total, 1),
        others_cpu_s=round(max(0.0, busy - server_cpu - client_cpu), 2),
        wall_s=0.0,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
