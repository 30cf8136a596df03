"""`python -m bench.shm_latency`: a lone ResNet-18 request, raw vs system shared memory vs plain gRPC.

Raw batch-1 ONNX Runtime runs and perf_analyzer at concurrency 1 (shared memory, then plain gRPC)
alternate in one process, ABBA order, so all three see the same background load; perf_analyzer's
latency split (from the server's ModelStatistics) shows what the server adds outside the model
run. The same standard-normal data goes to the raw run and to perf_analyzer.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from bench.models import export_resnet18
from bench.perf import ensure_perf_analyzer, write_input_data
from bench.raw import measure_raw
from bench.server import served_models

ORDER = ("raw", "system", "none", "none", "system", "raw")  # ABBA: drift hits every arm alike
_P50 = re.compile(r"latency (\d+) usec")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shm_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer measurement window")
    args = parser.parse_args(argv)
    binary = ensure_perf_analyzer()
    if binary is None:
        raise SystemExit("perf_analyzer is not available (scripts/ensure_perf_analyzer.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        model = export_resnet18(repo)
        server = served_models(repo)
        data = Path(tmp) / "data"
        data.mkdir()
        write_input_data(server, model.name, data)
        try:
            for step in ORDER:
                if step == "raw":
                    (point,) = measure_raw(repo / model.name, (1,), args.window_ms / 1000, model.onnx_path)
                    print(f"raw ONNX Runtime batch 1: p50 {point.latency_ms_p50:.2f} ms", flush=True)
                    continue
                command = [
                    str(binary),
                    "-m",
                    model.name,
                    "-i",
                    "grpc",
                    "-u",
                    server.address,
                    "--concurrency-range",
                    "1",
                    "--measurement-interval",
                    str(args.window_ms),
                    "--stability-percentage",
                    "1000",
                    "--max-trials",
                    "3",
                    "--percentile",
                    "50",
                    "--input-data",
                    str(data),
                    "--shared-memory",
                    step,
                ]
                out = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
                split = next((line.strip() for line in out.splitlines() if "Avg request latency" in line), "")
                p50 = _P50.findall(out)
                label = "system shared memory" if step == "system" else "plain gRPC"
                print(
                    f"{label}: p50 {int(p50[-1]) / 1000:.2f} ms; {split}" if p50 else f"{label}: {out[-500:]}",
                    flush=True,
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
