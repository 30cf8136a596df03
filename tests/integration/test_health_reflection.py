"""Start-up, health, shutdown and reflection of `convserve serve` as a real process.

The server is started the way an operator does (`convserve serve`, some settings from CONVSERVE_*
environment variables, flags winning over them) and asked for CUDA on a machine whose ONNX Runtime
has none: it must warn once, report the provider it really uses everywhere, log one structured
line per model, keep grpc.health.v1 NOT_SERVING until every model is loaded and warmed up, and turn
NOT_SERVING again when it is told to stop. grpcurl, a client that knows nothing of our protos,
lists and calls the services through server reflection.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc

from testkit import ServerProcess, ServerThread, write_tiny_model
from testkit import test_settings as settings_for

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
GRPCURL = Path(sys.executable).parent / "grpcurl"
CPU_ONLY = pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="checks the fallback of a CPU-only ONNX Runtime build; a GPU build may really run on CUDA",
)
TINY_MODELS = [f"tiny{i}" for i in range(6)]
SLOW_WARMUP_CONFIG = """\
name: slow
task: classification
inputs:
  - {name: image, dtype: float32, dims: [-1, 3, 640, 640]}
outputs:
  - {name: mean, dtype: float32, dims: [-1, 3]}
batching:
  max_batch_size: 16
"""


def write_slow_warmup_model(repo: Path) -> None:
    """Warm-up runs at max batch: 16 x 3 x 640 x 640 floats make loading take a visible while."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0)],
        "slow",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 640, 640])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "slow" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "slow" / "1" / "model.onnx"))
    (repo / "slow" / "config.yaml").write_text(SLOW_WARMUP_CONFIG)


def watch_health(address: str, until: float) -> list[int]:
    """Health statuses of the whole server, polled as fast as possible until SERVING (or `until`)."""
    seen: list[int] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            except grpc.RpcError:
                continue
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == SERVING:
                break
    return seen


class Started:
    """A started server process and what the test saw while it started."""

    def __init__(self, process: ServerProcess, health_seen: list[int]):
        self.process = process
        self.health_seen = health_seen

    def events(self, name=None) -> list[dict]:
        return [e for e in self.process.events() if name is None or e.get("event") == name]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    repo = tmp_path_factory.mktemp("health") / "repo"
    for name in TINY_MODELS:
        write_tiny_model(repo, name=name)
    write_slow_warmup_model(repo)
    env = {
        "CONVSERVE_SHUTDOWN_GRACE_S": "1.5",  # settings from the environment...
        "CONVSERVE_MAX_IMAGES_PER_REQUEST": "3",
        "CONVSERVE_HOST": "no-such-host.invalid",  # ...but a flag (--host 127.0.0.1) wins over its variable
    }
    process = ServerProcess(repo, "--providers", "cuda,cpu", env=env)
    try:
        seen = watch_health(process.address, time.monotonic() + 120)
        yield Started(process, seen)
    finally:
        process.kill()


def test_health_not_serving_until_every_model_is_warm(started):
    assert started.health_seen[0] == NOT_SERVING, "health must not say SERVING while models load"
    assert started.health_seen[-1] == SERVING
    order = [e["event"] for e in started.events() if e.get("event") in ("model_ready", "server_ready")]
    assert order == ["model_ready"] * (len(TINY_MODELS) + 1) + ["server_ready"]
    with grpc.insecure_channel(started.process.address) as channel:
        index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest())
    assert {m.name for m in index.models if m.state == "READY"} == {*TINY_MODELS, "slow"}


@CPU_ONLY
def test_one_structured_log_line_per_model(started):
    ready = {e["model"]: e for e in started.events("model_ready")}
    assert sorted(ready) == sorted([*TINY_MODELS, "slow"])
    for event in ready.values():
        assert event["level"] == "info" and event["version"] == "1"
        assert event["provider"] == "cpu"
        assert event["warmup_s"] >= 0 and event["load_s"] > 0
    assert ready["tiny0"]["signature"] == "inputs[input:float['N', 1, 8, 8]] outputs[logits:float['N', 3]]"
    assert "image:float['N', 3, 640, 640]" in ready["slow"]["signature"]
    assert ready["slow"]["warmup_s"] > 0  # a 16-image batch was really run
    (server_started,) = started.events("server_started")
    assert server_started["providers"] == "cuda,cpu"
    assert server_started["event_loop"] == "uvloop"  # the default (auto) where uvloop is installed, as here


@CPU_ONLY
def test_cuda_request_warns_once_and_reports_cpu(started):
    warnings = [e for e in started.events() if e.get("level") == "warning" and "CUDA" in e.get("msg", "")]
    assert len(warnings) == 1, warnings
    assert warnings[0]["event"] == "cuda_unavailable"
    with grpc.insecure_channel(started.process.address) as channel:
        config = pb_grpc.GRPCInferenceServiceStub(channel).ModelConfig(pb.ModelConfigRequest(name="tiny0")).config
    assert config.parameters["execution_provider"].string_value == "cpu"
    assert config.parameters["requested_providers"].string_value == "cuda,cpu"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU


def _metrics(started) -> str:
    url = f"http://127.0.0.1:{started.process.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def _samples(text: str, metric: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            values[labels[len(metric) :]] = float(value)
    return values


@CPU_ONLY
def test_metrics_report_provider_and_warmup(started):
    text = _metrics(started)
    providers = _samples(text, "convserve_model_provider_info")
    assert providers['{model="tiny0",provider="cpu",version="1"}'] == 1.0
    assert len(providers) == len(TINY_MODELS) + 1 and not any('provider="cuda"' in k for k in providers)
    warmup = _samples(text, "convserve_model_warmup_seconds")
    assert len(warmup) == len(TINY_MODELS) + 1 and all(v > 0 for v in warmup.values())
    assert _samples(text, "convserve_model_ready")['{model="slow",version="1"}'] == 1.0


def test_setting_from_environment_applies(started):
    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    request = vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny0"), images=[vpb.Image(encoded=png.tobytes())] * 4)
    with grpc.insecure_channel(started.process.address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            vpb_grpc.VisionServiceStub(channel).Classify(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 3" in error.value.details()


def grpcurl(address: str, *args: str, data: dict | None = None) -> str:
    command = [str(GRPCURL), "-plaintext"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    result = subprocess.run([*command, address, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reflection_lists_and_calls_services(started):
    address = started.process.address
    services = grpcurl(address, "list").split()
    assert {"inference.GRPCInferenceService", "convserve.v1.VisionService", "grpc.health.v1.Health"} <= set(services)
    described = grpcurl(address, "describe", "inference.GRPCInferenceService")
    assert "rpc ModelInfer ( .inference.ModelInferRequest ) returns ( .inference.ModelInferResponse )" in described
    assert json.loads(grpcurl(address, "inference.GRPCInferenceService/ModelReady", data={"name": "tiny1"})) == {
        "ready": True
    }
    assert json.loads(grpcurl(address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    ok, png = cv2.imencode(".png", np.full((8, 8), 200, np.uint8))
    request = {
        "model": {"name": "tiny2"},
        "images": [{"encoded": base64.b64encode(png.tobytes()).decode()}],
        "top_k": 3,
    }
    reply = json.loads(grpcurl(address, "convserve.v1.VisionService/Classify", data=request))
    assert (reply["model_name"], reply["model_version"]) == ("tiny2", "1")  # grpcurl keeps proto field names
    predictions = reply["results"][0]["predictions"]
    assert sorted(p["label"] for p in predictions) == ["bird", "cat", "dog"]
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5


def test_sigterm_turns_health_not_serving_then_exits_0(started):
    """Last in this module: it stops the shared server."""
    process = started.process
    seen: list[int] = []
    with grpc.insecure_channel(process.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        process.proc.send_signal(15)
        give_up = time.monotonic() + 1.0  # well inside the 1.5 s grace period from the environment
        while time.monotonic() < give_up:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            seen.append(status)
            if status == NOT_SERVING:
                break
    assert seen[-1] == NOT_SERVING
    assert process.terminate(timeout=60) == 0
    (event,) = [e for e in process.events() if e.get("event") == "shutdown_started"]
    assert event["grace_s"] == 1.5


def test_in_process_stop_turns_health_not_serving(tmp_path):
    write_tiny_model(tmp_path / "repo")
    server = ServerThread(settings_for(tmp_path / "repo", shutdown_grace_s=1.0)).start()
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        for service in ("", "inference.GRPCInferenceService", "convserve.v1.VisionService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        give_up = time.monotonic() + 0.8
        status = SERVING
        while status == SERVING and time.monotonic() < give_up:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == NOT_SERVING
        for service in ("inference.GRPCInferenceService", "convserve.v1.VisionService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
        assert v2.ServerReady(pb.ServerReadyRequest()).ready is False  # still answering inside the grace period
        stopping.join(timeout=60)
        assert not stopping.is_alive()
