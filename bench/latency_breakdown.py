"""`python -m bench.latency_breakdown`: where a lone request's time goes, served vs raw ONNX Runtime.

Why: `make bench`'s concurrency-1 target compares the served p50 latency with raw batch-1 latency,
and on a busy 2-core machine two measurements minutes apart differ by more than the 1.5 ms the
target allows. Here the two alternate in short blocks in one process (raw run, served call, raw
run, ...), so background load moves both alike, and the server's own V2 statistics
(ModelStatistics: queue and compute time, averages) split the served time into "inside the
model", "inside the server around it" and "outside the server" (client serialisation, transport,
protobuf parsing before the handler starts).

    python -m bench.latency_breakdown                 # resnet18 (random weights), 224x224 tensor input
    python -m bench.latency_breakdown --rounds 10 --per-round 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.models import export_resnet18
from bench.server import ServedModels
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import load_model_config
from service.runtime import ModelRuntime

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def infer_request(model: str, name: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def milliseconds(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def mean_ms(values: list[float]) -> float:
    return round(statistics.fmean(values) * 1000, 2)


def server_averages(stub, model: str) -> dict[str, float]:
    """Average ms per request of each ModelStatistics phase since the server started (warm-up included)."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_stats
    return {phase: round(getattr(stats, phase).ns / max(1, getattr(stats, phase).count) / 1e6, 2)
            for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks of raw runs and served calls")
    parser.add_argument("--per-round", type=int, default=20, help="raw runs and served calls per block")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="convserve-breakdown-") as tmp:
        repo = Path(tmp) / "repo"
        model = export_resnet18(repo)
        config = load_model_config(repo / "resnet18" / "config.yaml")
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        runtime = ModelRuntime(model.onnx_path, config, ("cpu",))  # the server's session options
        server = ServedModels(repo)
        try:
            with grpc.insecure_channel(server.address, options=UNLIMITED) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = infer_request("resnet18", config.inputs[0].name, x)
                for _ in range(3):
                    runtime.run({"input": x})
                    stub.ModelInfer(request)
                raw, served, serialise = [], [], []
                for _ in range(args.rounds):
                    for _ in range(args.per_round):
                        started = time.perf_counter()
                        runtime.run({"input": x})
                        raw.append(time.perf_counter() - started)
                    for _ in range(args.per_round):
                        started = time.perf_counter()
                        request.SerializeToString()
                        serialise.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        stub.ModelInfer(request)
                        served.append(time.perf_counter() - started)
                inside = server_averages(stub, "resnet18")
        finally:
            server.stop()
    print(f"resnet18, batch 1, 224x224 float32 tensor ({x.nbytes / 1e3:.0f} kB per request), "
          f"{args.rounds} alternating blocks of {args.per_round}")
    print(f"raw ONNX Runtime run, p50 / mean:           {milliseconds(raw):8.2f} / {mean_ms(raw):.2f} ms")
    print(f"served ModelInfer (sync client), p50 / mean: {milliseconds(served):8.2f} / {mean_ms(served):.2f} ms  "
          f"(p50 +{milliseconds(served) - milliseconds(raw):.2f} ms)")
    print(f"client request serialisation, p50:          {milliseconds(serialise):8.2f} ms")
    print(f"inside the server, means (ms):              {inside}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
