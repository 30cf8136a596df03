"""The Open Inference Protocol (KServe V2) over real gRPC, checked against ONNX Runtime in-process.

Every RPC of `inference.GRPCInferenceService` is called on a real server on loopback: health and
metadata, ModelConfig and ModelStatistics, inference with typed contents and raw contents (BYTES
length-prefixed), server-side preprocessing of encoded images, requested outputs and the
`classification` parameter, streaming, and the repository API. Model outputs must equal what
ONNX Runtime returns for the same tensors in this process.
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import load_model_config
from service.preprocess import preprocess_encoded
from service.servicers.v2_tensors import append_input, response_outputs
from testkit import ServerThread, slow_classifier_onnx, write_tiny_model
from service.settings import Limits
from testkit import test_settings as settings_for

BIG = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]

MEANS_CONFIG = """\
name: means
task: classification
inputs:
  - {name: image, dtype: float32, dims: [-1, 3, 640, 640]}
outputs:
  - {name: mean, dtype: float32, dims: [-1, 3]}
  - {name: max, dtype: float32, dims: [-1, 3]}
  - {name: same, dtype: float32, dims: [-1, 3, 640, 640]}
batching:
  max_batch_size: 2
  max_queue_delay_us: 0
"""


def write_means_model(repo):
    """[N, 3, 640, 640] -> per-channel mean and max [N, 3], and the image itself: full-size images pass both ways."""
    directory = repo / "means"
    (directory / "1").mkdir(parents=True)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMax", ["image"], ["max"], axes=[2, 3], keepdims=0),
        helper.make_node("Identity", ["image"], ["same"]),
    ]
    graph = helper.make_graph(
        nodes,
        "means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 640, 640])],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("max", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["N", 3, 640, 640]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "1" / "model.onnx"))
    (directory / "config.yaml").write_text(MEANS_CONFIG)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("v2") / "repo"
    write_tiny_model(repo, versions=(1, 2))
    write_means_model(repo)
    return repo


@pytest.fixture(scope="module")
def server(repo):
    server = ServerThread(settings_for(repo)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def reference(repo, name, version, inputs):
    """What ONNX Runtime returns in this process for the same model file and inputs."""
    session = ort.InferenceSession(str(repo / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def digits(seed=0, count=2):
    rng = np.random.default_rng(seed)
    return rng.random((count, 1, 8, 8), dtype=np.float32)


def png_bytes(seed):
    """A 20x24 gray PNG; the tiny model's preprocessing stretches it to 8x8."""
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    assert ok
    return data.tobytes()


def infer_raw(model, array, name="input", version=""):
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    append_input(request, name, array)
    return request


# ---- health and metadata ---------------------------------------------------------------------


def test_server_live_and_ready(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True


def test_model_ready_per_version(stub):
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="2")).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="7")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready is False


def test_server_metadata(stub):
    reply = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert reply.name == "convserve"
    assert reply.version
    assert {"classification", "model_repository", "statistics"} <= set(reply.extensions)


def test_model_metadata(stub):
    reply = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
    assert reply.name == "tiny"
    assert list(reply.versions) == ["1", "2"]
    assert reply.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == [("input", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [("logits", "FP32", [-1, 3])]
    means = stub.ModelMetadata(pb.ModelMetadataRequest(name="means"))
    assert [t.name for t in means.outputs] == ["mean", "max", "same"]


def test_model_config(stub):
    config = stub.ModelConfig(pb.ModelConfigRequest(name="tiny")).config
    assert config.name == "tiny"
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [1, 8, 8])]
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [("logits", [3], "labels.txt")]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.parameters["execution_provider"].string_value == "cpu"
    assert config.parameters["task"].string_value == "classification"
    big = stub.ModelConfig(pb.ModelConfigRequest(name="means")).config
    assert big.max_batch_size == 2 and list(big.input[0].dims) == [3, 640, 640]


# ---- inference -------------------------------------------------------------------------------


def test_infer_raw_contents_matches_onnxruntime(stub, repo):
    x = digits(1, count=3)
    reply = stub.ModelInfer(infer_raw("tiny", x))
    assert (reply.model_name, reply.model_version, reply.id) == ("tiny", "2", "req-1")  # default = newest
    assert len(reply.raw_output_contents) == 1 and reply.outputs[0].datatype == "FP32"
    assert list(reply.outputs[0].shape) == [3, 3]
    got = response_outputs(reply)["logits"]
    np.testing.assert_allclose(got, reference(repo, "tiny", 2, {"input": x})["logits"], rtol=1e-6, atol=1e-6)


def test_infer_typed_contents_matches_onnxruntime(stub, repo):
    x = digits(2)
    request = pb.ModelInferRequest(model_name="tiny", model_version="1")
    request.inputs.add(
        name="input",
        datatype="FP32",
        shape=list(x.shape),
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
    )
    reply = stub.ModelInfer(request)
    assert reply.model_version == "1"
    np.testing.assert_allclose(
        response_outputs(reply)["logits"], reference(repo, "tiny", 1, {"input": x})["logits"], rtol=1e-6, atol=1e-6
    )


def test_versions_serve_their_own_weights(stub, repo):
    x = digits(3)
    one = response_outputs(stub.ModelInfer(infer_raw("tiny", x, version="1")))["logits"]
    two = response_outputs(stub.ModelInfer(infer_raw("tiny", x, version="2")))["logits"]
    assert not np.allclose(one, two)
    np.testing.assert_allclose(one, reference(repo, "tiny", 1, {"input": x})["logits"], rtol=1e-6, atol=1e-6)


def test_full_size_image_passes_default_message_limit(stub, repo):
    """One 3x640x640 float32 image is 4.9 MB, above gRPC's 4 MiB default: the server allows 64 MiB, both ways."""
    image = np.random.default_rng(4).random((1, 3, 640, 640), dtype=np.float32)
    request = infer_raw("means", image, name="image")
    assert request.ByteSize() > 4 * 1024 * 1024
    got = response_outputs(stub.ModelInfer(request))
    want = reference(repo, "means", 1, {"image": image})
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
    np.testing.assert_array_equal(got["max"], want["max"])
    np.testing.assert_array_equal(got["same"], image)  # the reply carries the full image back


def test_large_http2_frames_and_window_carry_full_size_tensors_unchanged(repo):
    """With the HTTP/2 frame size and per-stream window raised (--http2-max-frame-bytes,
    --http2-lookahead-bytes), a 4.9 MB tensor still arrives and returns bit for bit."""
    server = ServerThread(settings_for(repo, http2_max_frame_bytes=1 << 20, http2_lookahead_bytes=8 << 20)).start()
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            image = np.random.default_rng(5).random((2, 3, 640, 640), dtype=np.float32)
            got = response_outputs(
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_raw("means", image, name="image"))
            )
        np.testing.assert_array_equal(got["same"], image)
        np.testing.assert_array_equal(got["max"], reference(repo, "means", 1, {"image": image})["max"])
    finally:
        server.stop()


def test_non_finite_inputs_reach_the_model_as_sent_by_default(stub, repo):
    """Like Triton (and what perf_analyzer's default random data needs): NaN and Inf go to the model;
    `--v2-reject-non-finite true` refuses them instead (tests/integration/test_bad_inputs.py)."""
    x = digits(12, count=2)
    x[0, 0, 0, :3] = (np.nan, np.inf, -np.inf)
    got = response_outputs(stub.ModelInfer(infer_raw("tiny", x)))["logits"]
    want = reference(repo, "tiny", 2, {"input": x})["logits"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)  # the finite row is unaffected


def test_bytes_image_input_runs_server_preprocessing(stub, repo):
    """A BYTES input of encoded images is decoded and preprocessed as the model config says."""
    images = [png_bytes(5), png_bytes(6)]
    spec = load_model_config(repo / "tiny" / "config.yaml").preprocessing
    tensor = np.stack([preprocess_encoded(data, spec)[0] for data in images])
    want = reference(repo, "tiny", 2, {"input": tensor})["logits"]
    raw = stub.ModelInfer(infer_raw("tiny", np.array(images, dtype=object)))  # length-prefixed raw
    np.testing.assert_allclose(response_outputs(raw)["logits"], want, rtol=1e-6, atol=1e-6)
    typed = pb.ModelInferRequest(model_name="tiny")
    typed.inputs.add(
        name="input", datatype="BYTES", shape=[2, 1], contents=pb.InferTensorContents(bytes_contents=images)
    )
    np.testing.assert_allclose(response_outputs(stub.ModelInfer(typed))["logits"], want, rtol=1e-6, atol=1e-6)


def test_requested_outputs_only(stub, repo):
    image = np.random.default_rng(7).random((2, 3, 640, 640), dtype=np.float32)
    request = infer_raw("means", image, name="image")
    request.outputs.add(name="max")
    reply = stub.ModelInfer(request)
    assert [o.name for o in reply.outputs] == ["max"]
    np.testing.assert_array_equal(response_outputs(reply)["max"], reference(repo, "means", 1, {"image": image})["max"])


def test_classification_parameter(stub, repo):
    """Triton's classification extension: top-k "score:index:label" strings, highest first."""
    x = digits(8, count=4)
    request = infer_raw("tiny", x)
    request.outputs.add(name="logits", parameters={"classification": pb.InferParameter(int64_param=2)})
    reply = stub.ModelInfer(request)
    assert reply.outputs[0].datatype == "BYTES" and list(reply.outputs[0].shape) == [4, 2]
    strings = response_outputs(reply)["logits"]
    logits = reference(repo, "tiny", 2, {"input": x})["logits"]
    labels = ["cat", "dog", "bird"]
    for row, want in zip(strings, logits):
        order = np.argsort(-want, kind="stable")[:2]
        parsed = [item.decode().split(":") for item in row]
        assert [int(index) for _, index, _ in parsed] == order.tolist()
        assert [label for _, _, label in parsed] == [labels[i] for i in order]
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], want[order], atol=1e-5)


def test_stream_infer_in_order_and_survives_a_bad_request(stub, repo):
    inputs = [digits(10 + i, count=1) for i in range(5)]
    requests = [infer_raw("tiny", x) for x in inputs]
    for request, x in zip(requests, inputs):
        request.id = f"frame-{len(request.id)}-{float(x.sum()):.4f}"
    bad = infer_raw("tiny", np.zeros((1, 1, 4, 4), np.float32))
    replies = list(stub.ModelStreamInfer(iter(requests[:2] + [bad] + requests[2:])))
    assert len(replies) == 6
    assert "input 'input'" in replies[2].error_message and not replies[2].HasField("infer_response")
    good = [r for i, r in enumerate(replies) if i != 2]
    for reply, request, x in zip(good, requests, inputs):
        assert reply.error_message == ""
        assert reply.infer_response.id == request.id
        want = reference(repo, "tiny", 2, {"input": x})["logits"]
        np.testing.assert_allclose(response_outputs(reply.infer_response)["logits"], want, rtol=1e-6, atol=1e-6)


# ---- statistics and repository ---------------------------------------------------------------


def _stats(stub, name):
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name)).model_stats
    return stats


def test_model_statistics_are_each_versions_own(tmp_path):
    """Two loaded versions: each version's ModelStatistics counts only the requests it served (a
    client comparing versions, or perf_analyzer -x, must not read one version's traffic as the
    other's); no version asked means the version plain requests go to (the newest)."""
    repo = tmp_path / "repo"
    write_tiny_model(repo, "two", versions=(1, 2), delay_us=0)
    server = ServerThread(settings_for(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for seed in range(3):
                assert stub.ModelInfer(infer_raw("two", digits(seed, count=2), version="1")).model_version == "1"
            assert stub.ModelInfer(infer_raw("two", digits(9, count=1))).model_version == "2"

            def stats(version: str) -> pb.ModelStatistics:
                request = pb.ModelStatisticsRequest(name="two", version=version)
                (entry,) = stub.ModelStatistics(request).model_stats
                return entry

            first, second, plain = stats("1"), stats("2"), stats("")
    finally:
        server.stop()
    assert (first.version, second.version, plain.version) == ("1", "2", "2")
    assert first.inference_stats.success.count == 3 and first.inference_count == 6
    assert second.inference_stats.success.count == 1 and second.inference_count == 1
    for entry in (first, second):
        sizes = {b.batch_size: b.compute_infer.count for b in entry.batch_stats}
        assert entry.execution_count == sum(sizes.values()) >= 1
        assert entry.inference_stats.compute_infer.count == entry.inference_stats.success.count
        assert entry.last_inference > 0
    assert plain.inference_stats.success.count == 1 and plain.inference_count == 1


def test_a_stream_runs_its_requests_together_within_its_window_and_answers_in_order(tmp_path):
    """A client that writes 12 requests without waiting: the server runs up to stream_max_pending (4)
    of them at once, so they batch (fewer executions than requests), never more than 4 in a batch
    although the model takes 16 (without the window: about 2 executions), and the answers still
    come back in request order."""
    repo = tmp_path / "repo"
    write_tiny_model(repo, "slow", max_batch=16, delay_us=0)
    slow_classifier_onnx(repo / "slow" / "1" / "model.onnx")
    server = ServerThread(settings_for(repo, limits=Limits(stream_max_pending=4))).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow")).model_stats[0]
            requests = []
            for index in range(12):
                requests.append(infer_raw("slow", digits(40 + index, count=1).reshape(1, 1, 8, 8)))
                requests[-1].id = f"frame-{index}"
            replies = list(stub.ModelStreamInfer(iter(requests), timeout=120))
            after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow")).model_stats[0]
        assert [r.infer_response.id for r in replies] == [f"frame-{i}" for i in range(12)]
        assert all(r.error_message == "" for r in replies)
        executions = after.execution_count - before.execution_count
        assert after.inference_count - before.inference_count == 12
        assert 3 <= executions < 12, f"{executions} executions for 12 requests: a window of 4 allows 3..11"
    finally:
        server.stop()


def test_a_cancelled_stream_leaves_nothing_in_flight(tmp_path):
    """The client gives up on a stream with requests still running: the server drops them (the
    in-flight gauge returns to zero) and keeps serving."""
    import time

    repo = tmp_path / "repo"
    write_tiny_model(repo, "slow", max_batch=1, delay_us=0)
    slow_classifier_onnx(repo / "slow" / "1" / "model.onnx")
    server = ServerThread(settings_for(repo, limits=Limits(stream_max_pending=4))).start()

    def inflight() -> float:
        return sum(
            sample.value
            for metric in server.running.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "convserve_inflight_requests" and sample.labels.get("model") == "slow"
        )

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = infer_raw("slow", digits(50, count=1))
            replies = stub.ModelStreamInfer(iter([request] * 8), timeout=120)
            assert next(replies).error_message == ""
            replies.cancel()
            give_up = time.monotonic() + 30
            while inflight() > 0 and time.monotonic() < give_up:
                time.sleep(0.05)
            assert inflight() == 0
            assert stub.ModelInfer(request, timeout=30).outputs[0].shape == [1, 3]
    finally:
        server.stop()


def test_model_statistics_counts_and_durations(stub):
    before = _stats(stub, "tiny")
    stub.ModelConfig(pb.ModelConfigRequest(name="tiny"))  # not an inference: not counted
    for seed in range(3):
        stub.ModelInfer(infer_raw("tiny", digits(20 + seed, count=2)))
    stub.ModelInfer(infer_raw("tiny", np.array([png_bytes(30)], dtype=object)))  # decoded in compute_input
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(infer_raw("tiny", np.zeros((1, 1, 3, 3), np.float32)))
    after = _stats(stub, "tiny")
    assert (after.name, after.version) == ("tiny", "2")
    b, a = before.inference_stats, after.inference_stats
    assert a.success.count - b.success.count == 4
    assert a.fail.count - b.fail.count == 1
    assert after.inference_count - before.inference_count == 7  # images
    assert 1 <= after.execution_count - before.execution_count <= 4
    # every successful request counts once in every stage, tensor inputs in compute_input too: perf_analyzer
    # refuses statistics whose compute_input, compute_infer and compute_output counts differ
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(a, stage).count - getattr(b, stage).count == 4, stage
        assert getattr(a, stage).ns > getattr(b, stage).ns, stage
    assert a.success.ns > b.success.ns
    assert after.last_inference >= before.last_inference > 0


def test_statistics_of_every_model(stub):
    names = {s.name for s in stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats}
    assert names == {"tiny", "means"}


def test_repository_index(stub):
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("means", "1", "READY"),
        ("tiny", "1", "READY"),
        ("tiny", "2", "READY"),
    ]


def test_repository_unload_and_load(tiny_server, tiny_repo):
    with grpc.insecure_channel(tiny_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        x = digits(40)
        want = reference(tiny_repo, "tiny", 1, {"input": x})["logits"]
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"))
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready is False
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(infer_raw("tiny", x))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        (entry,) = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        assert (entry.name, entry.state) == ("tiny", "UNAVAILABLE")
        assert stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models == []
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready is True
        np.testing.assert_allclose(
            response_outputs(stub.ModelInfer(infer_raw("tiny", x)))["logits"], want, rtol=1e-6, atol=1e-6
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="missing"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_failed_reload_is_reported_and_old_version_keeps_serving(tiny_server, tiny_repo):
    with grpc.insecure_channel(tiny_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        broken = tiny_repo / "tiny" / "2" / "model.onnx"
        broken.parent.mkdir()
        broken.write_bytes(b"not onnx at all")
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert str(broken) in error.value.details() and "still serving versions [1]" in error.value.details()
        reply = stub.ModelInfer(infer_raw("tiny", digits(41)))
        assert reply.model_version == "1"
        (entry,) = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        assert (entry.version, entry.state) == ("1", "READY") and "reload failed" in entry.reason
