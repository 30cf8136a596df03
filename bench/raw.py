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
        points.append(
            RawPoint(
                batch, len(times), round(batch * len(times) / elapsed, 2), round(float(np.median(times)) * 1000, 3)
            )
        )
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


@dataclass(frozen=True)
class RawJpegPoint:
    """In-process decode + preprocess of camera-sized JPEGs, and what it allows with the raw model run."""

    image_hw: tuple[int, int]
    jpeg_bytes: int
    preprocess_ms_per_image: float  # decode + resize + normalise, one thread, what the server runs per image
    model_images_per_s: float  # the raw best-batch figure it is combined with
    images_per_s: float  # 1 / (preprocess + model time per image): the in-process pipeline, one image after another


def measure_raw_jpeg(
    model_dir: Path, image_hw: tuple[int, int], seconds: float, model_images_per_s: float
) -> RawJpegPoint:
    """The reference for JPEG requests: the server's own preprocessing (service.preprocess) of the
    load tool's synthetic photo-like JPEGs, timed in this process, plus the raw run per image."""
    import cv2

    from loadtest.payloads import synthetic_image
    from service.preprocess import preprocess_encoded

    config = load_model_config(model_dir / "config.yaml")
    rng = np.random.default_rng(0)
    gray = config.inputs[0].dims[1] == 1
    images = [
        cv2.imencode(".jpg", synthetic_image(image_hw, gray, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        for _ in range(4)
    ]
    for data in images:
        preprocess_encoded(data, config.preprocessing)
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 20:
        data = images[len(times) % len(images)]
        t0 = time.perf_counter()
        preprocess_encoded(data, config.preprocessing)
        times.append(time.perf_counter() - t0)
    per_image = float(np.median(times))
    combined = 1.0 / (per_image + 1.0 / model_images_per_s) if model_images_per_s else 0.0
    return RawJpegPoint(
        tuple(image_hw),
        int(np.mean([len(d) for d in images])),
        round(per_image * 1000, 3),
        round(model_images_per_s, 2),
        round(combined, 2),
    )
