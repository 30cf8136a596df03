"""`python -m bench.experiments.statistics_cost`: what one V2 ModelStatistics call costs the server.

Why: ModelStatistics is answered on the event loop, so every other request waits while it runs,
and perf_analyzer asks for it around every measurement window. This serves the bundled model
repository, sends some inferences so the latency histograms hold samples, then times
ModelStatistics for one model and for all models (the client's wall time per call, medians).

    python -m bench.experiments.statistics_cost
    python -m bench.experiments.statistics_cost --model fcn8s --calls 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import grpc
import numpy as np

from bench.server import REPO_ROOT, served_models
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc


def _lenet5_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lenet5")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 32, 32])
    request.raw_input_contents.append(np.zeros((1, 1, 32, 32), np.float32).tobytes())
    return request


def _median_ms(call, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.statistics_cost", description=__doc__)
    parser.add_argument("--model", default="lenet5", help="the model whose statistics are asked for")
    parser.add_argument("--calls", type=int, default=40, help="ModelStatistics calls timed per case")
    parser.add_argument("--warm-requests", type=int, default=500, help="lenet5 inferences sent first")
    args = parser.parse_args(argv)
    server = served_models(REPO_ROOT / "model_repo")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = _lenet5_request()
            for _ in range(args.warm_requests):
                stub.ModelInfer(request, timeout=30)
            one = _median_ms(lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name=args.model)), args.calls)
            every = _median_ms(lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="")), args.calls)
    finally:
        server.stop()
    print(f"ModelStatistics({args.model}) median {one:.2f} ms; all models median {every:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
