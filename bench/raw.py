"""Raw ONNX Runtime in-process: the ceiling the served numbers are compared with.

The sessions are made by the server's own `ModelRuntime` from the same config, so thread counts,
graph optimisation and providers are exactly what the server uses; only gRPC, preprocessing and
batching are missing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import load_model_config
from service.runtime import ModelRuntime


@dataclass(frozen=True)
class RawPoint:
    batch: int
    runs: int
    images_per_s: float
    latency_ms_p50: float  # one run of the whole batch


def measure_raw(model_dir: Path, batches: tuple[int, ...], seconds: float, version_path: Path) -> list[RawPoint]:
    """images/s and median run latency at each batch size that the model's max_batch_size allows.

    With `instances` > 1 in the config, that many sessions run batches at the same time (one
    thread each, as the server's batcher would keep them busy) and images/s is their total.
    """
    config = load_model_config(model_dir / "config.yaml")
    runtime = ModelRuntime(version_path, config, ("cpu",))
    spec = config.inputs[0]
    rng = np.random.default_rng(0)
    points = []
    for batch in batches:
        if batch > config.batching.max_batch_size:
            continue
        inputs = {spec.name: rng.standard_normal((batch, *spec.dims[1:])).astype(np.float32)}
        for _ in range(2):
            runtime.run(inputs)
        times, elapsed = _run_for(runtime, inputs, seconds, config.batching.instances)
        points.append(RawPoint(batch, len(times), round(batch * len(times) / elapsed, 2), round(float(np.median(times)) * 1000, 3)))
    return points


def _run_for(runtime: ModelRuntime, inputs: dict, seconds: float, sessions: int) -> tuple[list[float], float]:
    """Run back to back on `sessions` threads for `seconds` (at least 3 runs each); (run times, elapsed)."""
    times: list[float] = []

    def loop() -> None:
        started = time.perf_counter()
        runs = 0
        while time.perf_counter() - started < seconds or runs < 3:
            t0 = time.perf_counter()
            runtime.run(inputs)
            times.append(time.perf_counter() - t0)  # list.append is atomic under the GIL
            runs += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(sessions)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return times, time.perf_counter() - started
