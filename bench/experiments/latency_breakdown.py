"""`python -m bench.experiments.latency_breakdown`: where a lone request's time goes, served vs raw ONNX Runtime.

Why: `make bench`'s concurrency-1 target compares the served p50 latency with raw batch-1 latency,
and on a busy 2-core machine two measurements minutes apart differ by more than the 1.5 ms the
target allows. Here the two alternate in short blocks in one process (raw run, served call, raw
run, ...), so background load moves both alike, and the server's own V2 statistics
(ModelStatistics: queue and compute time, read before and after the measured calls, so means)
split the served time into "inside the
model", "inside the server around it" and "outside the server" (client serialisation, transport,
protobuf parsing before the handler starts); the server's /metrics give the model run timed in its
worker thread, so the hand-off to and from the thread pool shows too.

    python -m bench.experiments.latency_breakdown                 # resnet18 (random weights), 224x224 tensor input
    python -m bench.experiments.latency_breakdown --rounds 10 --per-round 20
    python -m bench.experiments.latency_breakdown --compare '--http2-max-frame-bytes 1048576'   # A/B of server flags
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.experiments.echo_server import METHOD as ECHO_METHOD
from bench.models import export_resnet18
from bench.server import REPO_ROOT, ServerProcess, served_models
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import load_model_config
from service.runtime import ModelRuntime
from service.servicers.v2_tensors import append_input

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")
RUN_SAMPLES = ("convserve_model_executions_total", "convserve_model_execution_seconds_total")


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def mean_ms(values: list[float]) -> float:
    return round(statistics.fmean(values) * 1000, 2)


def server_totals(stub, model: str) -> dict[str, tuple[int, int]]:
    """(nanoseconds, count) of each ModelStatistics phase so far."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_stats
    return {phase: (getattr(stats, phase).ns, getattr(stats, phase).count) for phase in PHASES}


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request of each phase between two `server_totals` readings (the measured calls only)."""
    means = {}
    for phase in PHASES:
        ns, count = after[phase][0] - before[phase][0], after[phase][1] - before[phase][1]
        means[phase] = round(ns / max(1, count) / 1e6, 2)
    return means


def model_runs(server: ServerProcess, model: str) -> tuple[float, float]:
    """(executions, seconds) of the model's runs so far, timed in the server's worker thread
    (convserve_model_execution_seconds_total from its /metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name in RUN_SAMPLES:
                values[sample.name] = sample.value
    return values.get(RUN_SAMPLES[0], 0.0), values.get(RUN_SAMPLES[1], 0.0)


class EchoServer:
    """`python -m bench.experiments.echo_server` as a child process (the transport floor), ended on exit."""

    def __enter__(self) -> "EchoServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.experiments.echo_server"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"bench.experiments.echo_server did not start: {line!r}")
        self.address = f"127.0.0.1:{int(line.split()[1])}"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.experiments.latency_breakdown", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks of raw runs and served calls")
    parser.add_argument("--per-round", type=int, default=20, help="raw runs and served calls per block")
    parser.add_argument(
        "--compare",
        metavar="FLAGS",
        action="append",
        default=[],
        help="also serve from another server "
        "started with these extra `convserve serve` flags (repeatable), alternated with the default one "
        "(ABBA order), e.g. '--http2-max-frame-bytes 1048576'",
    )
    args = parser.parse_args(argv)
    setups = {"default": []} | {flags: shlex.split(flags) for flags in args.compare}
    with tempfile.TemporaryDirectory(prefix="convserve-breakdown-") as tmp:
        repo = Path(tmp) / "repo"
        model = export_resnet18(repo)
        config = load_model_config(repo / "resnet18" / "config.yaml")
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        runtime = ModelRuntime(model.onnx_path, config, ("cpu",))  # the server's session options
        name = config.inputs[0].name
        request = pb.ModelInferRequest(model_name="resnet18")
        append_input(request, name, x)
        servers: dict[str, ServerProcess] = {}
        with contextlib.ExitStack() as stack:
            for label, flags in setups.items():
                servers[label] = served_models(repo, *flags, "--metrics-port", "0")
                stack.callback(servers[label].stop)
            stubs = {
                label: pb_grpc.GRPCInferenceServiceStub(
                    stack.enter_context(grpc.insecure_channel(server.address, options=UNLIMITED))
                )
                for label, server in servers.items()
            }
            for _ in range(3):
                runtime.run({name: x})
                for stub in stubs.values():
                    stub.ModelInfer(request)
            echo = stack.enter_context(EchoServer())
            echo_call = stack.enter_context(grpc.insecure_channel(echo.address, options=UNLIMITED)).unary_unary(
                ECHO_METHOD
            )
            payload = request.SerializeToString()
            for _ in range(3):
                echo_call(payload)
            before = {label: server_totals(stub, "resnet18") for label, stub in stubs.items()}
            runs_before = {label: model_runs(server, "resnet18") for label, server in servers.items()}
            raw, serialise, floor = [], [], []
            served: dict[str, list[float]] = {label: [] for label in stubs}
            for round_ in range(args.rounds):
                for _ in range(args.per_round):
                    started = time.perf_counter()
                    runtime.run({name: x})
                    raw.append(time.perf_counter() - started)
                order = list(stubs.items())
                for label, stub in order if round_ % 2 == 0 else order[::-1]:  # ABBA: neither always goes second
                    for _ in range(args.per_round):
                        started = time.perf_counter()
                        request.SerializeToString()
                        serialise.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        stub.ModelInfer(request)
                        served[label].append(time.perf_counter() - started)
                for _ in range(args.per_round):
                    started = time.perf_counter()
                    echo_call(payload)
                    floor.append(time.perf_counter() - started)
            inside = {
                label: server_means(before[label], server_totals(stub, "resnet18")) for label, stub in stubs.items()
            }
            run_ms = {}
            for label, server in servers.items():
                (count_before, seconds_before), (count, seconds) = runs_before[label], model_runs(server, "resnet18")
                run_ms[label] = round((seconds - seconds_before) / max(1.0, count - count_before) * 1000, 2)
    print(
        f"resnet18, batch 1, 224x224 float32 tensor ({x.nbytes / 1e3:.0f} kB per request), "
        f"{args.rounds} alternating blocks of {args.per_round}"
    )
    print(f"raw ONNX Runtime run, p50 / mean:           {median_ms(raw):8.2f} / {mean_ms(raw):.2f} ms")
    print(f"client request serialisation, p50:          {median_ms(serialise):8.2f} ms")
    print(
        f"bare grpc.aio echo of the same bytes, p50:  {median_ms(floor):8.2f} ms  "
        "(Python gRPC + loopback, no convserve, no model)"
    )
    for label, times in served.items():
        print(f"served ModelInfer, server flags: {label}")
        print(
            f"  sync client, p50 / mean:                  {median_ms(times):8.2f} / {mean_ms(times):.2f} ms  "
            f"(p50 {median_ms(times) - median_ms(raw):+.2f} ms over raw)"
        )
        print(f"  inside the server, means (ms):            {inside[label]}")
        print(
            f"  model run in the worker thread, mean:     {run_ms[label]:8.2f} ms  "
            "(compute_infer minus this: the hand-off "
            f"to and from the thread pool, {inside[label]['compute_infer'] - run_ms[label]:+.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
