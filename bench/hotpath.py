"""`python -m bench.hotpath --tree before=PATH --tree after=.`: CPU per request of convserve's own path.

What it measures: the V2 servicer → data plane → dynamic batcher → ONNX Runtime → response path,
called directly with a stand-in gRPC context (64 concurrent callers, the digits model), so gRPC's
own per-call cost is left out. That cost dominates end to end and its noise on a shared machine
hides changes to our code; measured this way, a change to the hot path shows up clearly.
Each tree runs in its own child process (cwd = the tree, so its `service` package is imported),
in ABBA order over the rounds; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONCURRENCY = 64


class StandInContext:
    """The few grpc.aio.ServicerContext methods the unary path calls."""

    def invocation_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def set_trailing_metadata(self, metadata):
        self.metadata = metadata

    def time_remaining(self):
        return 30.0

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


async def _measure(repo: Path, requests: int) -> dict:
    import numpy as np

    from service.api.inference import grpc_service_pb2 as pb
    from service.server import start_server
    from service.servicers.calls import CallRunner
    from service.servicers.inference import InferenceServicer
    from service.settings import ServerSettings

    settings = ServerSettings(model_repo=repo, host="127.0.0.1", port=0, metrics_port=-1, providers=("cpu",),
                              shutdown_grace_s=0.0, drain_timeout_s=5.0, log_level="warning")
    running = await start_server(settings)
    calls = CallRunner(running.metrics, running.registry, settings.limits)
    servicer = InferenceServicer(running.stages, calls, running.lifecycle, shared_memory=running.shared_memory)
    model = next(iter(running.registry.entries))
    messages = []
    for seed in range(4):
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
        request.raw_input_contents.append(np.random.default_rng(seed).random((1, 1, 8, 8), dtype=np.float32).tobytes())
        messages.append(request)

    async def caller(index: int) -> None:
        for k in range(requests // CONCURRENCY):
            await servicer.ModelInfer(messages[(index + k) % len(messages)], StandInContext())

    await asyncio.gather(*(caller(i) for i in range(CONCURRENCY)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await running.stop()
    done = CONCURRENCY * (requests // CONCURRENCY)
    return {"cpu_us_per_request": round(1e6 * cpu / done, 1), "requests_per_s": round(done / wall, 1)}


def _child(repo: Path, requests: int) -> None:
    sys.path.insert(0, os.getcwd())  # the tree under test, ahead of any installed copy
    print(json.dumps(asyncio.run(_measure(repo, requests))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="a source tree (give two or more)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.requests)
        return 0
    if not args.tree:
        parser.error("give at least one --tree NAME=PATH")
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)]
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="convserve-hotpath-") as tmp:
        from bench.models import digits_model

        repo = Path(tmp) / "repo"
        repo.mkdir()
        digits_model(repo)
        for round_ in range(args.rounds):
            for name, path in trees if round_ % 2 == 0 else trees[::-1]:
                done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(repo), "--requests", str(args.requests)],
                                      cwd=path, capture_output=True, text=True, check=True)
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {round_} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    lines = [f"In-process V2 ModelInfer path (no gRPC), {CONCURRENCY} concurrent callers, {args.requests} requests per run, "
             f"{args.rounds} runs per tree (ABBA order), medians:", "",
             "| tree | CPU us/request | requests/s |", "|---|---:|---:|"]
    for name, _ in trees:
        runs = results[name]
        lines.append(f"| {name} | {statistics.median(r['cpu_us_per_request'] for r in runs):.0f} | "
                     f"{statistics.median(r['requests_per_s'] for r in runs):.0f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
