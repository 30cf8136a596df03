"""`python -m bench.experiments.v2_floor`: perf_analyzer against a V2 server that does nothing, beside convserve.

Why: `make bench`'s digits and concurrency-1 targets ask how close convserve comes to what the
machine allows. This measures the floor under any Python gRPC server: a bare grpc.aio server
(no interceptors, no convserve code, no model) that answers every V2 call with bytes recorded
from convserve once (server and model metadata, ModelConfig, ModelStatistics and one real ModelInfer
answer for the model). perf_analyzer cannot tell the two apart, so the difference between the rows is
what convserve's own work costs per request, and the bare server's row is what Python gRPC,
loopback, perf_analyzer and the machine's thread wake-ups cost on their own. Servers alternate
round by round (ABBA) because the background load of a shared machine drifts.

    python -m bench.experiments.v2_floor                          # lenet5, c1/c16/c64, 3 rounds
    python -m bench.experiments.v2_floor --concurrency 1,16 --rounds 5 --seconds 6
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np

from bench.experiments.alternating import alternate, print_medians
from bench.perf import ensure_perf_analyzer, write_input_data
from bench.server import REPO_ROOT, served_models
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.event_loop import chosen_loop, run_on

SERVICE = "inference.GRPCInferenceService"


def record_answers(address: str, model: str) -> dict[str, bytes]:
    """convserve's serialized answer to each V2 call perf_analyzer makes, for `model`."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        request = pb.ModelInferRequest(model_name=model)
        for tensor in metadata.inputs:
            dims = [1 if d < 0 else int(d) for d in tensor.shape]
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=dims)
            request.raw_input_contents.append(np.zeros(dims, np.float32).tobytes())
        answers = {
            "ServerLive": stub.ServerLive(pb.ServerLiveRequest()),
            "ServerReady": stub.ServerReady(pb.ServerReadyRequest()),
            "ServerMetadata": stub.ServerMetadata(pb.ServerMetadataRequest()),
            "ModelReady": stub.ModelReady(pb.ModelReadyRequest(name=model)),
            "ModelMetadata": metadata,
            "ModelConfig": stub.ModelConfig(pb.ModelConfigRequest(name=model)),
            "ModelStatistics": stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)),
            "ModelInfer": stub.ModelInfer(request),
        }
    return {name: message.SerializeToString() for name, message in answers.items()}


def newest_version(address: str, model: str) -> str:
    with grpc.insecure_channel(address) as channel:
        metadata = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=model))
    return max(metadata.versions, key=int)


class PassThrough(grpc.aio.ServerInterceptor):
    """An interceptor that only hands the call on, as each of convserve's does when it lets a call in."""

    async def intercept_service(self, continuation, handler_call_details):
        return await continuation(handler_call_details)


BARE_VARIANTS = {
    "bare": "grpc.aio, unary handlers",
    "bare+read": "ModelInfer as stream_unary reading its one message (how the received-bytes gate reads)",
    "bare+chain": "three pass-through interceptors in front (as many as convserve's chain)",
}


async def serve_recorded(answers: dict[str, bytes], variant: str = "bare") -> None:
    """The bare server: each recorded method answers its recorded bytes, without parsing the request.

    ModelInfer only counts its calls; ModelStatistics reports that count for the version asked
    about (perf_analyzer looks for the version it measures and for counts that moved). `variant`
    adds one piece of convserve's gRPC-level design at a time (BARE_VARIANTS)."""
    calls = 0

    def answer(data: bytes):
        async def handler(request: bytes, context) -> bytes:
            return data

        return grpc.unary_unary_rpc_method_handler(handler)  # bytes in, bytes out: no (de)serialisers

    async def infer(request: bytes, context) -> bytes:
        nonlocal calls
        calls += 1
        return answers["ModelInfer"]

    async def infer_read(request_iterator, context) -> bytes:
        nonlocal calls
        await context.read()
        calls += 1
        return answers["ModelInfer"]

    async def model_statistics(request: bytes, context) -> bytes:
        asked = pb.ModelStatisticsRequest.FromString(request)
        recorded = pb.ModelStatisticsResponse.FromString(answers["ModelStatistics"])
        entry = recorded.model_stats[0]
        entry.version = asked.version or entry.version
        entry.inference_count = entry.execution_count = entry.inference_stats.success.count = calls
        return pb.ModelStatisticsResponse(model_stats=[entry]).SerializeToString()

    interceptors = [PassThrough() for _ in range(3)] if variant == "bare+chain" else []
    options = [("grpc.max_receive_message_length", -1), ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    handlers = {name: answer(data) for name, data in answers.items()}
    handlers["ModelInfer"] = (
        grpc.stream_unary_rpc_method_handler(infer_read)
        if variant == "bare+read"
        else grpc.unary_unary_rpc_method_handler(infer)
    )
    handlers["ModelStatistics"] = grpc.unary_unary_rpc_method_handler(model_statistics)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


class BareServer:
    """`serve_recorded` in its own process (uvloop when installed, as convserve picks it)."""

    def __init__(self, answers: dict[str, bytes], variant: str):
        self._file = tempfile.NamedTemporaryFile(suffix=".pickle", delete=False)
        pickle.dump(answers, self._file)
        self._file.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.experiments.v2_floor", "--serve-recorded", self._file.name]
            + ["--servers", variant],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the bare server did not start: {line!r}")
        self.address = f"127.0.0.1:{int(line.split()[1])}"
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        os.unlink(self._file.name)


def perf_point(
    binary: Path, address: str, model: str, version: str, data: Path, concurrency: int, seconds: float
) -> tuple[float, float]:
    """(requests/s, p50 ms) from perf_analyzer, the way bench/perf.py drives it; the version is named
    (`-x`) because perf_analyzer otherwise needs the statistics to tell it which version answered."""
    window_ms = int(1000 * max(1.0, seconds / 3))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "perf.csv"
        command = [str(binary), "-m", model, "-x", version, "-i", "grpc", "-u", address]
        command += ["--concurrency-range", str(concurrency)]
        command += ["--measurement-interval", str(window_ms), "--stability-percentage", "1000", "--max-trials", "3"]
        command += ["--input-data", str(data), "-f", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=4 * window_ms / 1000 * 3 + 120)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        (row,) = list(csv.DictReader(report.open()))
    return float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.v2_floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="perf_analyzer time per point")
    parser.add_argument("--model", default="lenet5", help="a model of model_repo/")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated perf_analyzer concurrencies")
    parser.add_argument(
        "--servers",
        default="convserve,bare",
        help="comma-separated: convserve and bare servers ("
        + "; ".join(f"{k}: {v}" for k, v in BARE_VARIANTS.items())
        + ")",
    )
    parser.add_argument("--serve-recorded", metavar="FILE", help=argparse.SUPPRESS)  # the bare server's own process
    args = parser.parse_args(argv)
    if args.serve_recorded:
        answers = pickle.loads(Path(args.serve_recorded).read_bytes())
        run_on(chosen_loop("auto"), serve_recorded(answers, args.servers))
        return 0
    binary = ensure_perf_analyzer()
    if binary is None:
        print("perf_analyzer is not available (scripts/ensure_perf_analyzer.sh)", file=sys.stderr)
        return 1
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = args.servers.split(",")
    unknown = [k for k in kinds if k != "convserve" and k not in BARE_VARIANTS]
    if unknown:
        parser.error(f"unknown --servers {unknown}; choose from convserve, {', '.join(BARE_VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)

        @contextlib.contextmanager
        def serve(kind: str):
            """convserve on the bundled repository, or a bare server answering what it recorded."""
            served = served_models(REPO_ROOT / "model_repo")
            bare = None
            try:
                if not any(data.iterdir()):
                    write_input_data(served, args.model, data)
                version = newest_version(served.address, args.model)
                address = served.address
                if kind != "convserve":
                    answers = record_answers(served.address, args.model)
                    served.stop()
                    bare = BareServer(answers, kind)
                    address = bare.address
                yield lambda concurrency: perf_point(
                    binary, address, args.model, version, data, concurrency, args.seconds
                )
            finally:
                if bare is not None:
                    bare.stop()
                served.stop()

        results = alternate(kinds, args.rounds, levels, serve)
    title = f"{args.model}, perf_analyzer V2 over gRPC, medians of {args.rounds} alternating rounds"
    print_medians(results, title, "server", "p50 ms", "{:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
