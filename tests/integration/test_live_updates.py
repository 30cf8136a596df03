"""Live model updates: a new version swaps in after warm-up with no failed request; unload drains."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from testkit import ServerThread, slow_classifier_onnx, test_settings, tiny_classifier_onnx, write_tiny_model
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input


def _infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    append_input(request, "input", np.full((1, 1, 8, 8), 0.5, dtype=np.float32))
    return request


class Load:
    """Closed-loop clients that record every outcome and the version that answered."""

    def __init__(self, address: str, clients: int = 4):
        self.address = address
        self.outcomes: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self):
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = _infer_request()
            while not self.stop.is_set():
                try:
                    response = stub.ModelInfer(request, timeout=20)
                    self.outcomes.append(("OK", response.model_version))
                except grpc.RpcError as exc:
                    self.outcomes.append((exc.code().name, ""))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_explicit_load_swaps_version_under_load_without_failures(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo)
    server = ServerThread(test_settings(repo)).start()
    try:
        with Load(server.address) as load, grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            time.sleep(0.5)
            tiny_classifier_onnx(repo / "tiny" / "2" / "model.onnx", seed=2)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
            time.sleep(0.5)
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        codes = {code for code, _ in load.outcomes}
        versions = [version for _, version in load.outcomes]
        assert codes == {"OK"}, f"failed requests during the swap: {codes}"
        assert versions[0] == "1" and versions[-1] == "2"
        assert versions.index("2") > 10, "load barely started before the swap"
        assert {(m.name, m.version, m.state) for m in index.models} == {("tiny", "1", "READY"), ("tiny", "2", "READY")}
    finally:
        server.stop()


def test_poll_mode_picks_up_a_new_version(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo)
    server = ServerThread(test_settings(repo, poll_interval_s=0.2)).start()
    try:
        # serve_forever runs the poller in production; tests start it the same way.
        from service.server import _poll_repository

        poller = server.call(_start_task(_poll_repository(server.running)))
        tiny_classifier_onnx(repo / "tiny" / "3" / "model.onnx", seed=3)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            give_up = time.monotonic() + 30
            version = ""
            while time.monotonic() < give_up and version != "3":
                version = stub.ModelInfer(_infer_request(), timeout=10).model_version
                time.sleep(0.05)
        assert version == "3"
        server.loop.call_soon_threadsafe(poller.cancel)
    finally:
        server.stop()


async def _start_task(coroutine):
    import asyncio

    return asyncio.get_running_loop().create_task(coroutine)


def test_unload_drains_queued_requests_then_refuses(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo, max_batch=1, queue=256)
    # A slow graph keeps a backlog queued, so the unload is sure to meet admitted requests.
    slow_classifier_onnx(repo / "tiny" / "1" / "model.onnx")
    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = _infer_request()
            futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(64)]
            registry = server.running.metrics.registry
            deadline = time.monotonic() + 30
            while (registry.get_sample_value("convserve_queue_depth", {"model": "tiny"}) or 0) < 4:
                assert time.monotonic() < deadline, "no backlog formed before the unload"
                time.sleep(0.005)
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"), timeout=60)
            outcomes = []
            for future in futures:
                try:
                    future.result()
                    outcomes.append("OK")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
            assert outcomes.count("OK") > 0
            # Queued requests finished; those arriving after the unload began were refused cleanly.
            assert set(outcomes) <= {"OK", "UNAVAILABLE"}, set(outcomes)
            assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=10).ready
            try:
                stub.ModelInfer(request, timeout=10)
                raise AssertionError("an unloaded model answered")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert "unload" in exc.details()
    finally:
        server.stop()
