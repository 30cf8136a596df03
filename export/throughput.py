"""Side-by-side CPU timing of model variants (fp32 vs int8 vs fp16) on a shared, noisy machine.

Why interleaved: when other processes come and go, two measurements taken a minute apart see
different machines. Running the variants in turn (A B A B ...) in one process, on the same input,
exposes both to the same background load, and the ratio of their median run times stays
meaningful even when absolute numbers drift. Thread counts are explicit (never "all cores"), and
idle ONNX Runtime threads do not spin, so one variant's threads do not steal from the next.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPT_LEVEL_NAMES = ("disable", "basic", "extended", "all")


def cpu_session(path: Path, threads: int, level: str = "all", optimized_output: Path | None = None):
    """A CPU InferenceSession with `threads` intra-op threads and graph optimisation `level`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = _level(level)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if optimized_output is not None:
        options.optimized_model_filepath = str(optimized_output)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _level(name: str):
    import onnxruntime as ort

    levels = dict(
        zip(
            OPT_LEVEL_NAMES,
            (
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            ),
        )
    )
    return levels[name]


@dataclass(frozen=True)
class Timing:
    """Run times (seconds) of one variant at one batch size."""

    batch: int
    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "runs": len(self.seconds),
            "median_ms": round(self.median_s * 1000, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


def tile_batch(samples: np.ndarray, batch: int) -> np.ndarray:
    """`batch` items [batch, ...] cycling through `samples` [N, ...] (N >= 1)."""
    return np.ascontiguousarray(samples[np.arange(batch) % len(samples)])


def interleaved_timings(
    sessions: dict[str, object], feed: dict[str, np.ndarray], rounds: int, warmup: int = 2, min_seconds: float = 0.0
) -> dict[str, Timing]:
    """Run each session on `feed` in turn, `rounds` times (A B A B ...); one Timing per session.

    Keeps going past `rounds` until `min_seconds` have elapsed, so fast models get enough samples.
    """
    batch = len(next(iter(feed.values())))
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    started = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - started < min_seconds:
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - t0)
        done += 1
    return {name: Timing(batch, tuple(values)) for name, values in times.items()}


def interleaved_creation(paths: dict[str, tuple[Path, str]], threads: int, repeats: int) -> dict[str, float]:
    """Median seconds to create a session, per variant name -> (file, optimisation level), interleaved."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, (path, level) in paths.items():
            t0 = time.perf_counter()
            cpu_session(path, threads, level)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def ratio_of_medians(numerator: Timing, denominator: Timing) -> float:
    """How many times faster `denominator`'s variant runs than `numerator`'s (median time ratio)."""
    return numerator.median_s / denominator.median_s


def machine_description() -> dict:
    """CPU model, usable cores, vector extensions that matter for INT8, and the load right now."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown"
    )
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    loadavg = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "int8_extensions": [f for f in wanted if f in flags],
        "loadavg": " ".join(loadavg),
    }
