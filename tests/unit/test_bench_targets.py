"""bench/results.py's verdicts: the issue's targets computed from measurements (pure functions)."""

from __future__ import annotations

from bench.load import STREAMED_TENSOR, ServedPoint
from bench.raw import RawJpegPoint, RawPoint
from bench.results import GRPC, GRPC_REPEAT, SHM, evaluate_targets, to_json, to_markdown


def point(model, payload, concurrency, rps, p50=1.0):
    return ServedPoint(
        model=model,
        payload=payload,
        concurrency=concurrency,
        throughput_rps=rps,
        images_per_s=rps,
        latency_ms={"p50": p50, "p90": p50, "p99": p50},
        errors={},
        requests_total=100,
        server_cpu_us_per_request=500.0,
        client_cpu_us_per_request=100.0,
        others_cpu_s=0.0,
        wall_s=1.0,
    )


RAW = {
    "resnet18": [RawPoint(1, 50, 96.0, 10.4), RawPoint(16, 10, 100.0, 160.0)],
    "lenet5": [RawPoint(16, 100, 9e4, 0.2)],
}
JPEG = {"resnet18": RawJpegPoint((224, 224), 9000, 1.0, 100.0, 90.9)}


def verdicts(served):
    targets = evaluate_targets(RAW, served, "lenet5", None, 1.0, {}, JPEG)
    return {t["target"].split(" (")[0]: t["passed"] for t in targets}


def test_each_issue_target_passes_and_fails_on_its_own_threshold():
    served = [
        point("resnet18", SHM, 1, 90, p50=11.3),
        point("resnet18", GRPC, 1, 80, p50=12.5),
        point("resnet18", SHM, 16, 96),
        point("resnet18", GRPC, 16, 89),
        point("resnet18", "jpeg", 16, 78),
        point("lenet5", GRPC, 16, 2100),
        point("lenet5", GRPC, 64, 2050),
        point("lenet5", STREAMED_TENSOR, 64, 2500),
    ]
    got = verdicts(served)
    assert got["resnet18 perf_analyzer shm c1 p50 <= raw batch-1 p50 + 1.0 ms"] is True  # +0.9 ms
    assert got["resnet18 perf_analyzer grpc c1 p50 <= raw batch-1 p50 + 2.0 ms"] is False  # +2.1 ms over 10.4
    assert got["resnet18 perf_analyzer shm c16 >= 0.95 x raw best"] is True  # 96 / 100
    assert got["resnet18 perf_analyzer grpc c16 >= 0.9 x raw best"] is False  # 89 / 100
    assert got["resnet18 JPEG 224x224 via Classify c16 >= 0.85 x in-process decode+preprocess+raw run"] is True
    assert got["lenet5 perf_analyzer grpc: c64 >= c16"] is False  # 2050 < 2100
    assert got["lenet5 perf_analyzer grpc: the better of c16 and c64 >= 2,000 req/s"] is True


def test_decline_check_compares_medians_of_the_alternating_rounds():
    first = [point("lenet5", GRPC, 16, 2100), point("lenet5", GRPC, 64, 2050)]  # one pair alone: a decline
    repeats = [
        point("lenet5", GRPC_REPEAT, 16, 2000),
        point("lenet5", GRPC_REPEAT, 64, 2150),
        point("lenet5", GRPC_REPEAT, 16, 2020),
        point("lenet5", GRPC_REPEAT, 64, 2080),
    ]
    assert verdicts(first)["lenet5 perf_analyzer grpc: c64 >= c16"] is False
    assert verdicts(first + repeats)["lenet5 perf_analyzer grpc: c64 >= c16"] is True  # medians 2020 vs 2080
    slower = [point("lenet5", GRPC_REPEAT, 16, 2200), point("lenet5", GRPC_REPEAT, 64, 1900)] * 2
    assert verdicts(first + slower)["lenet5 perf_analyzer grpc: c64 >= c16"] is False  # 2200 vs 1900


def test_report_renders_the_jpeg_reference_and_every_point():
    served = [point("resnet18", SHM, 1, 90), point("resnet18", "jpeg", 16, 70)]
    meta = {
        "mode": "quick",
        "date": "d",
        "machine": "m",
        "loadavg_before": "0",
        "loadavg_after": "0",
        "versions": "v",
        "notes": [],
    }
    targets = evaluate_targets(RAW, served, "lenet5", None, 1.0, {}, JPEG)
    data = to_json(meta, RAW, served, targets, {"available": False}, None, {}, JPEG)
    text = to_markdown(data)
    assert "decode + preprocess 1.00 ms/image" in text
    assert f"| resnet18 | {SHM} | 1 |" in text and "| resnet18 | jpeg | 16 |" in text
    assert "FAIL: resnet18 JPEG 224x224 via Classify c16" in text  # 70 < 0.85 x 90.9
