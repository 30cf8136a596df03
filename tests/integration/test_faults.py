"""Broken models stay contained; a burst over capacity is refused fast and the server recovers."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from testkit import ServerThread, slow_classifier_onnx, test_settings, write_tiny_model
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input


def _request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    append_input(request, "input", np.full((1, 1, 8, 8), 0.25, dtype=np.float32))
    return request


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def batch_one_only_onnx(path):
    """Runs at batch 1 but fails at any larger batch: a model that breaks its warm-up at max batch."""
    weight = numpy_helper.from_array(np.ones((64, 3), np.float32), "weight")
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "batch_one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight, shape],
    )
    _save(graph, path)


def test_broken_models_are_unavailable_with_reasons_and_others_serve(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo, "good")
    write_tiny_model(repo, "corrupt")
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    write_tiny_model(repo, "badconfig")
    (repo / "badconfig" / "config.yaml").write_text((repo / "badconfig" / "config.yaml").read_text() + "colour: blue\n")
    write_tiny_model(repo, "warmup")
    batch_one_only_onnx(repo / "warmup" / "1" / "model.onnx")
    write_tiny_model(repo, "noversion")
    (repo / "noversion" / "1" / "model.onnx").unlink()
    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models}
            expected_reasons = {
                "corrupt": "model.onnx",
                "badconfig": "colour: unknown field",
                "warmup": "Reshape",
                "noversion": "no model.onnx",
            }
            for name, fragment in expected_reasons.items():
                assert index[name].state == "UNAVAILABLE", (name, index[name])
                assert fragment in index[name].reason, (name, index[name].reason)
                assert not stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready
                try:
                    stub.ModelInfer(_request(name), timeout=10)
                    raise AssertionError(f"{name} answered")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert fragment in exc.details()
            assert index["good"].state == "READY"
            assert stub.ModelInfer(_request("good"), timeout=10).outputs[0].shape == [1, 3]
    finally:
        server.stop()


def test_burst_over_capacity_is_refused_fast_and_the_server_recovers(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo, "slow", max_batch=4, delay_us=0, queue=8)
    slow_classifier_onnx(repo / "slow" / "1" / "model.onnx")
    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = _request("slow")

            def one(_):
                started = time.perf_counter()
                try:
                    stub.ModelInfer(request, timeout=60)
                    return "OK", time.perf_counter() - started
                except grpc.RpcError as exc:
                    return exc.code().name, time.perf_counter() - started

            capacity = 8 + 4  # queue + one running batch
            with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
                results = list(pool.map(one, range(10 * capacity)))
            codes = [code for code, _ in results]
            assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, set(codes)
            assert codes.count("OK") >= capacity // 2
            refused = sorted(seconds for code, seconds in results if code == "RESOURCE_EXHAUSTED")
            served = sorted(seconds for code, seconds in results if code == "OK")
            assert refused[len(refused) // 2] < served[len(served) // 2], "refusals were not faster than service"
            queue_depth = server.running.metrics.registry.get_sample_value("convserve_queue_depth", {"model": "slow"})
            assert queue_depth == 0
            after = [one(i)[0] for i in range(5)]
            assert after == ["OK"] * 5, "server did not recover after the burst"
    finally:
        server.stop()
