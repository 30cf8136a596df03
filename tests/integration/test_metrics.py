"""Prometheus metrics over real HTTP after a known mix of real gRPC requests.

A real server on loopback serves two models; the module drives an exact number of good and bad
requests (unary, V2, both stream kinds, control-plane calls, an unknown model) and then scrapes
/metrics like Prometheus would. Every count is known in advance, so the scrape must match it
exactly: requests by method and code, one latency observation per stage per good inference,
batch-size observations summing to the images sent, and V2 ModelStatistics (read through the real
tritonclient) agreeing with the scrape.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input
from testkit import REPO_ROOT, ServerThread, write_tiny_model
from testkit import test_settings as settings_for

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "convserve-dashboard.json"
STAGES = ("queue", "preprocess", "inference", "postprocess", "total")


# ---- helpers -----------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, list]:
    """sample name -> [(labels, value)], parsed by prometheus_client's own text parser."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(value for have, value in samples.get(name, []) if all(have.get(k) == v for k, v in labels.items()))


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (12, 10), dtype=np.uint8))
    assert ok
    return data.tobytes()


def v2_request(model: str, batch: int, version: str = "", shape=(1, 8, 8)) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    append_input(request, "input", np.random.default_rng(batch).random((batch, *shape), dtype=np.float32))
    return request


def classify_request(model: str, images: list[bytes]) -> vpb.ClassifyRequest:
    return vpb.ClassifyRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=i) for i in images])


def expect_code(call, request, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert info.value.code() == code, info.value.details()


# ---- the traffic -------------------------------------------------------------------------------

# (model label, method, code) -> count, for everything `traffic` sends; the scrape must equal it.
EXPECTED_REQUESTS = Counter(
    {
        ("tiny", "Classify", "OK"): 3,
        ("tiny", "ModelInfer", "OK"): 4,
        ("tiny", "ModelStreamInfer", "OK"): 2,
        ("tiny", "StreamClassify", "OK"): 2,
        ("tiny2", "ModelInfer", "OK"): 3,
        ("tiny", "ModelMetadata", "OK"): 2,
        ("_unknown", "Classify", "NOT_FOUND"): 2,
        ("_unknown", "ModelInfer", "NOT_FOUND"): 1,
        ("_unknown", "ModelStreamInfer", "NOT_FOUND"): 1,
        ("tiny", "ModelInfer", "INVALID_ARGUMENT"): 2,
        ("tiny", "ModelInfer", "NOT_FOUND"): 1,
        ("tiny", "Classify", "INVALID_ARGUMENT"): 1,
        ("tiny", "StreamClassify", "INVALID_ARGUMENT"): 1,
        ("tiny", "Detect", "FAILED_PRECONDITION"): 1,
    }
)
TINY_GOOD = 3 + 4 + 2 + 2  # inference requests (and stream frames) that ran the model
TINY_IMAGES = 3 * 2 + (1 + 1 + 2 + 3) + 2 + 2
TINY_FAILED = 2 + 1 + 1 + 1 + 1  # inference calls naming tiny that failed
TINY_V1_FAILED = TINY_FAILED - 1  # ... of which the one naming version 7 belongs to no version


def traffic(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        vision = vpb_grpc.VisionServiceStub(channel)
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        for seed in range(3):
            reply = vision.Classify(classify_request("tiny", [png(seed), png(seed + 10)]))
            assert len(reply.results) == 2
        for batch in (1, 1, 2, 3):
            assert v2.ModelInfer(v2_request("tiny", batch)).model_version == "1"
        assert v2.ModelInfer(v2_request("tiny2", 1, version="1")).model_version == "1"
        assert v2.ModelInfer(v2_request("tiny2", 1, version="1")).model_version == "1"
        assert v2.ModelInfer(v2_request("tiny2", 2)).model_version == "2"
        v2.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
        v2.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
        stream = list(v2.ModelStreamInfer(iter([v2_request("tiny", 1), v2_request("nope", 1), v2_request("tiny", 1)])))
        assert [bool(r.error_message) for r in stream] == [False, True, False]
        frames = [
            vpb.ClassifyFrame(model=vpb.ModelRef(name="tiny"), frame_id=i, image=vpb.Image(encoded=data))
            for i, data in enumerate([png(1), b"not an image", png(2)])
        ]
        results = list(vision.StreamClassify(iter(frames)))
        assert [r.error.code for r in results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
        expect_code(vision.Classify, classify_request("nope", [png(0)]), grpc.StatusCode.NOT_FOUND)
        expect_code(vision.Classify, classify_request("nope", [png(0)]), grpc.StatusCode.NOT_FOUND)
        expect_code(v2.ModelInfer, v2_request("nope", 1), grpc.StatusCode.NOT_FOUND)
        expect_code(v2.ModelInfer, v2_request("tiny", 1, shape=(1, 3, 3)), grpc.StatusCode.INVALID_ARGUMENT)
        expect_code(v2.ModelInfer, v2_request("tiny", 9), grpc.StatusCode.INVALID_ARGUMENT)  # over max_batch_size 8
        expect_code(v2.ModelInfer, v2_request("tiny", 1, version="7"), grpc.StatusCode.NOT_FOUND)
        expect_code(vision.Classify, classify_request("tiny", [b"\x89PNG broken"]), grpc.StatusCode.INVALID_ARGUMENT)
        expect_code(
            vision.Detect,
            vpb.DetectRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=png(0))]),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("metrics") / "repo"
    write_tiny_model(repo, "tiny")
    write_tiny_model(repo, "tiny2", versions=(1, 2))
    server = ServerThread(settings_for(repo)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scraped(server) -> dict:
    traffic(server.address)
    return scrape(server.metrics_url)


# ---- the checks --------------------------------------------------------------------------------


def test_requests_by_method_and_code(scraped):
    seen = Counter()
    for labels, value in scraped["convserve_requests_total"]:
        if value:
            seen[(labels["model"], labels["method"], labels["code"])] += int(value)
    assert seen == EXPECTED_REQUESTS


def test_version_label_on_requests(scraped):
    assert total(scraped, "convserve_requests_total", model="tiny2", version="1", code="OK") == 2
    assert total(scraped, "convserve_requests_total", model="tiny2", version="2", code="OK") == 1
    assert total(scraped, "convserve_requests_total", model="_unknown", version="") == 4


def test_one_latency_observation_per_stage_per_good_request(scraped):
    for stage in STAGES:  # preprocess too: V2 tensor requests time their input checks there (compute_input)
        assert total(scraped, "convserve_request_duration_seconds_count", model="tiny", stage=stage) == TINY_GOOD, stage
        assert total(scraped, "convserve_request_duration_seconds_count", model="tiny2", stage=stage) == 3, stage
    assert total(scraped, "convserve_request_duration_seconds_count", stage="total", model="tiny2", version="2") == 1
    assert not [
        labels for labels, _ in scraped["convserve_request_duration_seconds_count"] if labels["model"] == "_unknown"
    ]


def test_stage_durations_add_up(scraped):
    seconds = {s: total(scraped, "convserve_request_duration_seconds_sum", model="tiny", stage=s) for s in STAGES}
    assert all(value > 0 for value in seconds.values()), seconds
    parts = seconds["queue"] + seconds["preprocess"] + seconds["inference"] + seconds["postprocess"]
    assert parts <= seconds["total"] * 1.001, seconds


def test_latency_buckets_span_sub_millisecond_to_seconds(scraped):
    bounds = {float(labels["le"]) for labels, _ in scraped["convserve_request_duration_seconds_bucket"]}
    assert min(bounds) <= 0.0001 and max(b for b in bounds if b != float("inf")) >= 10
    assert float("inf") in bounds
    inf_count = total(scraped, "convserve_request_duration_seconds_bucket", model="tiny", stage="total", le="+Inf")
    assert inf_count == TINY_GOOD


def test_images_and_batches(scraped):
    images = total(scraped, "convserve_images_total", model="tiny")
    assert images == TINY_IMAGES
    assert total(scraped, "convserve_batch_size_sum", model="tiny") == TINY_IMAGES
    executions = total(scraped, "convserve_model_executions_total", model="tiny")
    assert total(scraped, "convserve_batch_size_count", model="tiny") == executions
    assert total(scraped, "convserve_batch_requests_count", model="tiny") == executions
    assert total(scraped, "convserve_batch_requests_sum", model="tiny") == TINY_GOOD  # each ran in one submit
    assert 1 <= executions <= TINY_GOOD
    assert total(scraped, "convserve_model_execution_seconds_total", model="tiny") > 0
    assert total(scraped, "convserve_images_total", model="tiny2") == 4


def test_gauges_at_rest(scraped):
    for model in ("tiny", "tiny2"):
        assert total(scraped, "convserve_queue_depth", model=model) == 0
        assert total(scraped, "convserve_inflight_requests", model=model) == 0
        for reason in ("queue_full", "deadline"):
            assert "convserve_rejected_requests_total" in scraped and any(
                labels == {"model": model, "reason": reason} and v == 0
                for labels, v in scraped["convserve_rejected_requests_total"]
            )


def test_model_state_metrics(scraped):
    for model, version in (("tiny", "1"), ("tiny2", "1"), ("tiny2", "2")):
        assert total(scraped, "convserve_model_ready", model=model, version=version) == 1
        assert total(scraped, "convserve_model_provider_info", model=model, version=version, provider="cpu") == 1
        assert total(scraped, "convserve_model_load_seconds", model=model, version=version) > 0
        assert total(scraped, "convserve_model_warmup_seconds", model=model, version=version) > 0


def test_process_metrics(scraped):
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_info",
    ):
        assert name in scraped, name
    assert total(scraped, "process_resident_memory_bytes") > 10 * 2**20
    assert total(scraped, "process_open_fds") > 0


def test_model_statistics_agree_with_the_scrape(server, scraped):
    """tritonclient's view (V2 ModelStatistics) equals the scrape: one source for both."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.address)
    try:
        (stats,) = client.get_inference_statistics("tiny", as_json=True)["model_stats"]
        every = client.get_inference_statistics("", as_json=True)["model_stats"]
    finally:
        client.close()
    assert sorted(s["name"] for s in every) == ["tiny", "tiny2"]
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) == TINY_GOOD
    assert int(inference["fail"]["count"]) == TINY_V1_FAILED  # statistics are version 1's own
    assert int(stats["inference_count"]) == total(scraped, "convserve_images_total", model="tiny")
    assert int(stats["execution_count"]) == total(scraped, "convserve_model_executions_total", model="tiny")
    for field, stage in (
        ("success", "total"),
        ("queue", "queue"),
        ("compute_input", "preprocess"),
        ("compute_infer", "inference"),
        ("compute_output", "postprocess"),
    ):
        count = total(scraped, "convserve_request_duration_seconds_count", model="tiny", stage=stage)
        seconds = total(scraped, "convserve_request_duration_seconds_sum", model="tiny", stage=stage)
        assert int(inference[field]["count"]) == count, field
        assert abs(int(inference[field]["ns"]) - seconds * 1e9) <= 1000, field
    # batch_stats: one entry per batch size run; together they are every execution and every image,
    # and their model time is the scrape's execution time
    batches = stats["batch_stats"]
    assert len(batches) >= 2, batches  # the mix ran lone requests and merged batches
    counts = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in batches}
    assert sum(counts.values()) == int(stats["execution_count"])
    assert sum(size * count for size, count in counts.items()) == int(stats["inference_count"])
    assert all(
        int(b["compute_input"]["count"]) == int(b["compute_output"]["count"]) == counts[int(b["batch_size"])]
        for b in batches
    )
    run_ns = sum(int(b["compute_infer"]["ns"]) for b in batches)
    assert abs(run_ns - total(scraped, "convserve_model_execution_seconds_total", model="tiny") * 1e9) <= 1000 * len(
        batches
    )


def test_rejections_are_counted(tmp_path):
    """Backpressure (queue full) and deadlines each increment their own counter."""
    from service.settings import Limits

    repo = tmp_path / "repo"
    write_tiny_model(repo, "tiny", max_batch=8, queue=1)
    # A deadline of 1 microsecond has always passed by the time the batcher looks at the request.
    server = ServerThread(settings_for(repo, limits=Limits(max_deadline_s=1e-6))).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            expect_code(v2.ModelInfer, v2_request("tiny", 2), grpc.StatusCode.RESOURCE_EXHAUSTED)  # 2 images > queue 1
            expect_code(v2.ModelInfer, v2_request("tiny", 1), grpc.StatusCode.DEADLINE_EXCEEDED)
            expect_code(v2.ModelInfer, v2_request("tiny", 1), grpc.StatusCode.DEADLINE_EXCEEDED)
        scraped = scrape(server.metrics_url)
    finally:
        server.stop()
    assert total(scraped, "convserve_rejected_requests_total", model="tiny", reason="queue_full") == 1
    assert total(scraped, "convserve_rejected_requests_total", model="tiny", reason="deadline") == 2
    assert total(scraped, "convserve_requests_total", model="tiny", code="RESOURCE_EXHAUSTED") == 1
    assert total(scraped, "convserve_requests_total", model="tiny", code="DEADLINE_EXCEEDED") == 2
    assert total(scraped, "convserve_images_total", model="tiny") == 0
    assert total(scraped, "convserve_request_duration_seconds_count", model="tiny") == 0


# ---- the dashboard only queries what the server exports ----------------------------------------


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    dashboard = json.loads(path.read_text())
    expressions = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        expressions.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable.get("type") == "query":
            expressions.append(query["query"] if isinstance(query, dict) else query)
    return expressions


def metric_names(expression: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers followed by a selector or range."""
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expression))
    names |= set(re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", expression))
    return {n for n in names if n not in {"by", "without", "on", "ignoring", "group_left", "group_right"}}


def test_every_dashboard_metric_is_exported(scraped):
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    names = set().union(*(metric_names(e) for e in expressions))
    assert {
        "convserve_requests_total",
        "convserve_request_duration_seconds_bucket",
        "convserve_batch_size_bucket",
        "convserve_queue_depth",
        "process_resident_memory_bytes",
    } <= names
    missing = sorted(n for n in names if n not in scraped)
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"


def test_every_metric_is_documented():
    from service.metrics import Metrics

    text = (REPO_ROOT / "docs" / "metrics.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in text, f"{name} is not documented in docs/metrics.md"


def test_queue_depth_sums_the_batchers_of_a_model():
    """Each loaded version has its own batcher; the per-model gauge must add them, not overwrite."""
    from service.metrics import Metrics

    metrics = Metrics(process_metrics=False)
    v1, v2 = metrics.batch_observer("m", "1"), metrics.batch_observer("m", "2")

    def depth():
        return metrics.registry.get_sample_value("convserve_queue_depth", {"model": "m"})

    v1.queue_depth(3)
    v2.queue_depth(5)
    assert depth() == 8
    v1.queue_depth(0)
    assert depth() == 5
    v2.queue_depth(2)
    assert depth() == 2
