"""One served measurement: the load tool as a child process, the server's CPU read around it.

CPU per request = the server's CPU seconds during the run / every request it answered (warm-up
and probe included). `others_cpu_s` is what the rest of the machine burned meanwhile (all busy
CPU minus server and client): on a shared box it says how noisy the number is.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import REPO_ROOT, ServerProcess, system_busy_seconds


@dataclass(frozen=True)
class ServedPoint:
    model: str
    payload: str
    concurrency: int
    throughput_rps: float
    images_per_s: float
    latency_ms: dict
    errors: dict
    requests_total: int
    server_cpu_us_per_request: float
    client_cpu_us_per_request: float
    others_cpu_s: float
    wall_s: float
    rss_mb: list = field(default_factory=list)  # (seconds, MB) samples when asked for


STREAMED_TENSOR = "tensor-stream"  # V2 tensors over ModelStreamInfer, one stream per concurrent sender


def payload_flags(payload: str) -> list[str]:
    """Load-tool flags of a benchmark payload: tensor, jpeg, or tensor-stream."""
    if payload == STREAMED_TENSOR:
        return ["--payload", "tensor", "--streaming"]
    return ["--payload", payload]


def run_served(
    server: ServerProcess,
    model: str,
    payload: str,
    concurrency: int,
    duration: float,
    warmup: float,
    extra: tuple[str, ...] = (),
    sample_rss: bool = False,
) -> ServedPoint:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        command = [
            sys.executable,
            "-m",
            "loadtest",
            "--host",
            server.address,
            "--model",
            model,
            *payload_flags(payload),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--timeout",
            "60",
            "--json",
            str(out),
            *extra,
        ]
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        sampler = (
            threading.Thread(target=_sample_rss, args=(server, samples, stop), daemon=True) if sample_rss else None
        )
        children_before = _children_cpu()
        cpu_before, busy_before, started = server.cpu_seconds(), system_busy_seconds(), time.monotonic()
        if sampler:
            sampler.start()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=duration + warmup + 300)
        stop.set()
        wall = time.monotonic() - started
        server_cpu, busy = server.cpu_seconds() - cpu_before, system_busy_seconds() - busy_before
        client_cpu = _children_cpu() - children_before
        if done.returncode not in (0, 1) or not out.exists():
            raise RuntimeError(f"load tool failed ({done.returncode}): {done.stderr[-2000:]}")
        report = json.loads(out.read_text())
    total = report["requests_ok"] + report["requests_failed"] + report["warmup_requests"] + 1
    return ServedPoint(
        model=model,
        payload=payload,
        concurrency=concurrency,
        throughput_rps=report["throughput_rps"],
        images_per_s=report["images_per_s"],
        latency_ms=report["latency_ms"],
        errors=report["errors"],
        requests_total=total,
        server_cpu_us_per_request=round(1e6 * server_cpu / total, 1),
        client_cpu_us_per_request=round(1e6 * report["client_cpu_s"] / total, 1),
        others_cpu_s=round(max(0.0, busy - server_cpu - client_cpu), 2),
        wall_s=round(wall, 2),
        rss_mb=[(round(t, 1), round(mb, 1)) for t, mb in samples],
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sample_rss(server: ServerProcess, samples: list, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - started, server.rss_mb()))
        stop.wait(1.0)
