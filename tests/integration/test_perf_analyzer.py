"""Triton's perf_analyzer, unchanged and with its default random input data, against a real server.

The project promises that standard Open Inference Protocol clients work unchanged. perf_analyzer
checks more than a plain client: it reads ModelMetadata and ModelConfig to build its requests,
sends random bytes as float data (NaN and Inf included), and aborts when ModelStatistics' compute
counts disagree. The binary comes from scripts/ensure_perf_analyzer.sh, which `make test` runs
first; without it this test fails rather than skips.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from testkit import ServerThread, copy_bundled_model
from testkit import test_settings as settings_for

BIN = Path(
    os.environ.get("PERF_ANALYZER_BIN", Path.home() / ".cache" / "convserve" / "perf_analyzer" / "perf_analyzer")
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("perf") / "repo"
    copy_bundled_model("lenet5", repo)
    server = ServerThread(settings_for(repo)).start()
    yield server
    server.stop()


def requests_served(server, method: str) -> float:
    return sum(
        sample.value
        for metric in server.running.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "convserve_requests_total"
        and sample.labels.get("method") == method
        and sample.labels.get("code") == "OK"
    )


def shared_memory_requests(server) -> float:
    return (
        server.running.metrics.registry.get_sample_value("convserve_shared_memory_requests_total", {"model": "lenet5"})
        or 0.0
    )


@pytest.mark.parametrize("method", ["ModelInfer", "ModelStreamInfer", "shared-memory"])
def test_perf_analyzer_measures_the_server_unchanged(server, method, tmp_path):
    """Plain unary and streaming calls, and unary calls over system shared memory (perf_analyzer
    creates, registers, writes and unregisters the regions itself)."""
    assert BIN.exists(), f"{BIN} is missing: run scripts/ensure_perf_analyzer.sh (make test does)"
    report = tmp_path / "perf.csv"
    command = [
        str(BIN),
        "-m",
        "lenet5",
        "-i",
        "grpc",
        "-u",
        server.address,
        "--concurrency-range",
        "2",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "1000",
        "--max-trials",
        "3",
        "-f",
        str(report),
    ]
    # 1000 %: the test checks compatibility, not stability; on a busy machine a stricter
    # percentage makes perf_analyzer give up ("Failed to obtain stable measurement")
    if method == "ModelStreamInfer":
        command.append("--streaming")
    shared_before = shared_memory_requests(server)
    if method == "shared-memory":
        command += ["--shared-memory", "system"]
        method = "ModelInfer"
    before = requests_served(server, method)
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "error" not in done.stdout.lower(), done.stdout[-4000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
    assert float(row["Server Compute Infer"]) > 0  # it read our ModelStatistics
    assert requests_served(server, method) - before > 10
    if "--shared-memory" in command:
        assert shared_memory_requests(server) - shared_before > 10
        assert not server.running.shared_memory, "perf_analyzer unregisters its regions when it ends"
