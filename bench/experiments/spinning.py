"""`python -m bench.experiments.spinning`: ONNX Runtime intra-op spinning on vs off, interleaved in one process.

Why: `runtime.intra_op_spinning` (docs/model-config.md) trades CPU for latency, and which side
wins depends on the model's size. Two sessions of one model with the same options except
`session.intra_op.allow_spinning` run on the same input, each in its own child process, the two
settings alternating over several rounds (so a noisy machine moves both alike, and one setting's
spinning threads never steal the other's cores); the report is the ratio of median run times
(off / on) and the CPU time per run of each process, spinning included.

    python -m bench.experiments.spinning                         # resnet18 (random weights) and the bundled lenet5
    python -m bench.experiments.spinning --onnx model.onnx --shape 1,3,224,224
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import REPO_ROOT, export_resnet18


def session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(
    path: str, shape: tuple[int, ...], threads: int, spinning: bool, seconds: float
) -> tuple[list[float], float]:
    """In a fresh process: run times (s) for about `seconds`, and the process CPU seconds per run."""
    s = session(Path(path), threads, spinning)
    feed = {s.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    s.run(None, feed)
    times, cpu = [], time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(times) < 3:
        started = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - started)
    return times, (time.process_time() - cpu) / len(times)


def compare(path: Path, shape: tuple[int, ...], threads: int, seconds: float, rounds: int = 4) -> dict:
    """Alternate child processes (off, on, off, ...): spinning threads of one setting must not
    steal the cores of the other, and each process's CPU time is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for spinning in (False, True):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                times, cpu_per_run = pool.submit(
                    measure, str(path), shape, threads, spinning, seconds / rounds
                ).result()
            wall[spinning] += times
            cpu[spinning].append(cpu_per_run)
    off, on = statistics.median(wall[False]), statistics.median(wall[True])
    return {
        "runs": len(wall[True]),
        "off_ms": off * 1e3,
        "on_ms": on * 1e3,
        "off_over_on": off / on,
        "off_cpu_ms_per_run": statistics.median(cpu[False]) * 1e3,
        "on_cpu_ms_per_run": statistics.median(cpu[True]) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, help="a model file (default: resnet18 and the bundled lenet5)")
    parser.add_argument("--shape", help="input shape for --onnx, e.g. 1,3,224,224")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing seconds per case (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.onnx:
            cases = [(args.onnx.name, args.onnx, tuple(int(v) for v in args.shape.split(",")))]
        else:
            resnet = export_resnet18(Path(scratch)).onnx_path
            lenet = REPO_ROOT / "model_repo" / "lenet5" / "1" / "model.onnx"
            cases = [
                ("resnet18", resnet, (1, 3, 224, 224)),
                ("resnet18", resnet, (8, 3, 224, 224)),
                ("lenet5", lenet, (1, 1, 32, 32)),
                ("lenet5", lenet, (32, 1, 32, 32)),
            ]
        print(
            "| model | input | runs | spinning off ms | on ms | off/on | CPU ms/run off | on |  "
            f"({args.threads} intra-op threads)"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, path, shape in cases:
            r = compare(path, shape, args.threads, args.seconds)
            print(
                f"| {name} | {'x'.join(map(str, shape))} | {r['runs']} | {r['off_ms']:.3f} | {r['on_ms']:.3f} | "
                f"{r['off_over_on']:.2f} | {r['off_cpu_ms_per_run']:.3f} | {r['on_cpu_ms_per_run']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
