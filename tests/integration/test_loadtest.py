"""The load-test tool against real servers: ours, and a minimal third-party-style V2 server.

Runs are short (about a second) so the file stays fast; what is checked is that the tool builds
valid requests from the server's own model description, counts what it sends, reports errors by
gRPC status, and writes its JSON and plot.
"""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import numpy as np
import pytest

from loadtest.cli import main
from loadtest.engine import RawResults
from loadtest.generators import arrival_offsets, split_evenly
from loadtest.report import summarise
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc

SHORT = ["--duration", "1", "--warmup", "0.2"]


def metric_sum(server, name: str, **labels: str) -> float:
    """A sample's value summed over the labels not given (e.g. version)."""
    total = 0.0
    for metric in server.running.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def run_json(capsys, *args: str) -> dict:
    assert main([*args, *SHORT, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_closed_loop_tensor_requests_against_our_server(tiny_server, capsys):
    report = run_json(capsys, "--host", tiny_server.address, "--model", "tiny", "--concurrency", "4")
    assert report["mode"] == "closed" and report["concurrency"] == 4
    assert report["requests_ok"] > 10 and report["requests_failed"] == 0 and report["errors"] == {}
    assert report["throughput_rps"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    served = metric_sum(tiny_server, "convserve_requests_total", model="tiny", method="ModelInfer", code="OK")
    sent = report["requests_ok"] + report["warmup_requests"] + 1  # + the probe
    assert served == sent


def test_open_loop_jpeg_over_the_vision_api_with_plot(tiny_server, capsys, tmp_path):
    plot = tmp_path / "latency.png"
    report = run_json(
        capsys,
        "--host",
        tiny_server.address,
        "--model",
        "tiny",
        "--rate",
        "40",
        "--arrival",
        "constant",
        "--api",
        "vision",
        "--payload",
        "jpeg",
        "--batch",
        "2",
        "--plot",
        str(plot),
    )
    assert report["mode"] == "open" and report["arrival"] == "constant"
    assert report["request"].startswith("vision Classify, jpeg x2")
    assert 30 <= report["requests_ok"] <= 42, "constant arrivals at 40/s for 1 s"
    assert report["images_per_s"] == pytest.approx(2 * report["throughput_rps"])
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_v2_jpeg_payload_uses_server_side_preprocessing(tiny_server, capsys):
    report = run_json(
        capsys, "--host", tiny_server.address, "--model", "tiny", "--payload", "jpeg", "--concurrency", "2"
    )
    assert report["requests_ok"] > 0 and report["errors"] == {}
    preprocessed = metric_sum(tiny_server, "convserve_request_duration_seconds_count", model="tiny", stage="preprocess")
    assert preprocessed >= report["requests_ok"]


def test_errors_are_counted_by_grpc_status(tiny_server, capsys):
    # A wrong shape: every request fails with INVALID_ARGUMENT (no probe, so the run goes on).
    code = main(
        [
            "--host",
            tiny_server.address,
            "--model",
            "tiny",
            "--shape",
            "input:1,8,9",
            "--no-probe",
            "--concurrency",
            "2",
            *SHORT,
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1, "no request succeeded"
    assert report["requests_ok"] == 0 and set(report["errors"]) == {"INVALID_ARGUMENT"}
    assert report["errors"]["INVALID_ARGUMENT"] == report["requests_failed"] > 0


def test_probe_failure_stops_the_run_with_a_clear_message(tiny_server, capsys):
    assert main(["--host", tiny_server.address, "--model", "tiny", "--shape", "input:1,8,9", *SHORT]) == 2
    assert "probe request" in capsys.readouterr().err
    assert main(["--host", tiny_server.address, "--model", "nope", *SHORT]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_processes_split_the_load_and_merge_the_results(tiny_server, capsys):
    report = run_json(
        capsys, "--host", tiny_server.address, "--model", "tiny", "--concurrency", "3", "--processes", "2"
    )
    assert report["processes"] == 2 and report["requests_ok"] > 0 and report["errors"] == {}
    assert report["client_cpu_s"] > 0


def test_streaming_closed_loop_sends_every_request_over_model_stream_infer(tiny_server, capsys):
    report = run_json(capsys, "--host", tiny_server.address, "--model", "tiny", "--concurrency", "4", "--streaming")
    assert report["request"].startswith("V2 ModelStreamInfer, tensor x1")
    assert report["requests_ok"] > 10 and report["errors"] == {}
    streamed = metric_sum(tiny_server, "convserve_requests_total", model="tiny", method="ModelStreamInfer", code="OK")
    assert streamed == report["requests_ok"] + report["warmup_requests"] + 1  # + the probe


def test_streaming_past_the_per_connection_stream_cap_spreads_over_connections(tiny_server, capsys):
    """40 streams against the server's default cap of 16 per connection: the tool opens 3
    connections by default, so no stream is refused (on one connection 24 would be)."""
    report = run_json(capsys, "--host", tiny_server.address, "--model", "tiny", "--concurrency", "40", "--streaming")
    assert report["requests_ok"] > 40 and report["errors"] == {}


def test_streaming_open_loop_keeps_the_schedule(tiny_server, capsys):
    report = run_json(
        capsys, "--host", tiny_server.address, "--model", "tiny", "--rate", "40", "--arrival", "constant", "--streaming"
    )
    assert report["mode"] == "open" and report["errors"] == {}
    assert 30 <= report["requests_ok"] <= 42, "constant arrivals at 40/s for 1 s"


def test_streaming_counts_in_band_errors_and_probes_through_a_stream(tiny_server, capsys):
    code = main(
        [
            "--host",
            tiny_server.address,
            "--model",
            "tiny",
            "--shape",
            "input:1,8,9",
            "--no-probe",
            "--streaming",
            "--concurrency",
            "2",
            *SHORT,
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["requests_ok"] == 0
    assert (
        set(report["errors"]) == {"STREAM_ERROR_MESSAGE"}
        and report["errors"]["STREAM_ERROR_MESSAGE"] == report["requests_failed"] > 0
    )
    assert (
        main(["--host", tiny_server.address, "--model", "tiny", "--shape", "input:1,8,9", "--streaming", *SHORT]) == 2
    )
    assert "probe request (V2 ModelStreamInfer" in capsys.readouterr().err
    assert main(["--host", tiny_server.address, "--model", "tiny", "--api", "vision", "--streaming", *SHORT]) == 2
    assert "--streaming needs --api v2" in capsys.readouterr().err


class MinimalV2Server(pb_grpc.GRPCInferenceServiceServicer):
    """Another vendor's V2 server as far as the tool can tell: metadata and infer only, no ModelConfig.

    Its model "summer" takes INT32 [-1, 5] and returns each row's sum as INT64 [-1, 1].
    """

    def __init__(self):
        self.rows = 0

    def ModelMetadata(self, request, context):
        response = pb.ModelMetadataResponse(name="summer", versions=["1"], platform="custom")
        response.inputs.add(name="numbers", datatype="INT32", shape=[-1, 5])
        response.outputs.add(name="sums", datatype="INT64", shape=[-1, 1])
        return response

    def ModelInfer(self, request, context):
        tensor = request.inputs[0]
        if tensor.name != "numbers" or tensor.datatype != "INT32" or list(tensor.shape)[1:] != [5]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"bad input {tensor.name} {tensor.datatype} {list(tensor.shape)}"
            )
        values = np.frombuffer(request.raw_input_contents[0], dtype="<i4").reshape(list(tensor.shape))
        self.rows += len(values)
        response = pb.ModelInferResponse(model_name="summer")
        response.outputs.add(name="sums", datatype="INT64", shape=[len(values), 1])
        response.raw_output_contents.append(values.sum(axis=1, dtype="<i8").tobytes())
        return response

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=self.ModelInfer(request, context))


@pytest.fixture
def other_server():
    servicer = MinimalV2Server()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_works_against_a_v2_server_without_model_config(other_server, capsys):
    address, servicer = other_server
    report = run_json(capsys, "--host", address, "--model", "summer", "--concurrency", "2", "--batch", "3")
    assert report["requests_ok"] > 0 and report["errors"] == {}
    assert servicer.rows == 3 * (report["requests_ok"] + report["warmup_requests"] + 1)
    servicer.rows = 0
    report = run_json(capsys, "--host", address, "--model", "summer", "--concurrency", "2", "--streaming")
    assert report["requests_ok"] > 0 and report["errors"] == {}
    assert servicer.rows == report["requests_ok"] + report["warmup_requests"] + 1


def test_poisson_and_constant_arrivals_have_the_asked_rate():
    poisson = list(arrival_offsets(200.0, "poisson", 20.0, seed=1))
    assert len(poisson) == pytest.approx(4000, rel=0.05)
    gaps = np.diff(poisson)
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.1), "exponential gaps: std equals the mean"
    constant = list(arrival_offsets(10.0, "constant", 1.0, phase=0.5))
    assert constant == pytest.approx([0.05 + 0.1 * k for k in range(10)])
    assert split_evenly(7, 3) == [3, 2, 2]


def test_report_statistics_match_numpy():
    raw = RawResults(start=0.0, duration=2.0)
    rng = np.random.default_rng(0)
    latencies = rng.uniform(0.001, 0.05, 200)
    for k, latency in enumerate(latencies):
        raw.add(k * 0.01, float(latency), 0 if k % 10 else 14)  # every tenth: UNAVAILABLE
    raw.add(-0.5, 0.01, 0)  # a warm-up request
    summary = summarise(
        raw,
        target="t",
        model="m",
        request="r",
        concurrency=1,
        rate=0.0,
        arrival="poisson",
        processes=1,
        warmup=0.5,
        images_per_request=1,
    )
    ok = np.array([lat for k, lat in enumerate(latencies) if k % 10])
    assert summary.latency_ms["p99"] == pytest.approx(np.percentile(ok * 1000, 99), abs=1e-3)
    assert summary.latency_ms["max"] == pytest.approx(ok.max() * 1000, abs=1e-3)
    assert summary.errors == {"UNAVAILABLE": 20} and summary.warmup_requests == 1
    finished = sum(1 for k, lat in enumerate(latencies) if k % 10 and k * 0.01 + lat <= 2.0)
    assert summary.throughput_rps == pytest.approx(finished / 2.0, abs=0.01)
