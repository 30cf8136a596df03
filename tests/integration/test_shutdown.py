"""Graceful shutdown under load: nothing accepted is lost, the process exits 0."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit import ServerProcess, write_tiny_model
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    append_input(request, "input", np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))
    return request


def test_sigterm_under_load_loses_nothing(tmp_path):
    write_tiny_model(tmp_path / "repo")
    server = ServerProcess(tmp_path / "repo", "--shutdown-grace-s", "0.5", "--drain-timeout-s", "10")
    try:
        server.wait_serving()
        outcomes: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + 8

        def client():
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = _request()
                while time.monotonic() < stop_at:
                    try:
                        response = stub.ModelInfer(request, timeout=10)
                        assert response.outputs[0].shape == [2, 3]
                        outcome = "OK"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name
                    with lock:
                        outcomes.append(outcome)
                    if outcome != "OK":
                        return

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            server.proc.send_signal(15)
            statuses = []
            for _ in range(40):  # health must flip at once, well before the grace period ends
                statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                if statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.01)
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
        for thread in threads:
            thread.join(30)
        assert server.proc.wait(30) == 0
    finally:
        server.kill()
    ok = outcomes.count("OK")
    failures = {o for o in outcomes if o != "OK"}
    assert ok > 50, f"too little load to test shutdown: {ok} successes"
    assert failures <= {"UNAVAILABLE"}, f"requests failed with other codes than UNAVAILABLE: {failures}"
    events = [e.get("event") for e in server.events()]
    assert "shutdown_started" in events and "shutdown_done" in events
