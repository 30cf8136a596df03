"""The received-bytes gate on a real server: reads (unary messages and stream frames) wait for room,
unary reads for their connection's turn, slow senders are cut, health checks pass by, and
unparseable messages are the client's error.

A slow sender is a real gRPC client calling ModelInfer as a client-streaming call whose one
message comes late: on the wire that is a unary call whose body has not arrived yet.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
from prometheus_client.parser import text_string_to_metric_families
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import hostile_requests as hostile
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.settings import Limits
from testkit import ServerThread, test_settings, write_tiny_model

MIB = 2**20
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
READ_TIMEOUT_S = 1.0
WAIT_S = 0.5  # the server's deadline cap: waits end server-side, with their reason, before the client's 5 s


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory):
    """Room for two messages of the largest size; one read at a time per connection; waits end at
    WAIT_S (--max-deadline-s), well before the clients' own deadlines, so the reason comes back."""
    repo = tmp_path_factory.mktemp("gate") / "repo"
    write_tiny_model(repo)
    limits = Limits(
        max_message_bytes=4 * MIB,
        max_received_bytes=8 * MIB,
        max_reads_per_peer=1,
        message_read_timeout_s=READ_TIMEOUT_S,
        max_deadline_s=WAIT_S,
    )
    server = ServerThread(test_settings(repo, limits=limits, http_port=0)).start()
    yield server
    server.stop()


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])  # its own connection


def _good_request() -> pb.ModelInferRequest:
    return hostile.v2_tensor("tiny", (1, 1, 8, 8))


class SlowSender:
    """A ModelInfer whose message is sent `delay_s` after the call opens (or never, if released)."""

    def __init__(self, channel: grpc.Channel, delay_s: float):
        self.release = threading.Event()
        self.delay_s = delay_s
        call = channel.stream_unary(
            MODEL_INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        self.future = call.future(self._messages(), timeout=30)

    def _messages(self) -> Iterator[pb.ModelInferRequest]:
        if not self.release.wait(self.delay_s):
            yield _good_request()

    def outcome(self) -> tuple[grpc.StatusCode, str, float]:
        started = time.perf_counter()
        try:
            self.future.result(timeout=30)
            return grpc.StatusCode.OK, "", time.perf_counter() - started
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", time.perf_counter() - started

    def stop(self) -> None:
        self.release.set()
        self.future.cancel()


def _infer(channel: grpc.Channel, timeout: float) -> tuple[grpc.StatusCode, str]:
    stub_call = channel.unary_unary(
        MODEL_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    try:
        stub_call(_good_request(), timeout=timeout)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _http_infer(base_url: str) -> tuple[int, str]:
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}
    ).encode()
    request = urllib.request.Request(f"{base_url}/v2/models/tiny/infer", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_message_that_does_not_arrive_in_time_is_cut(gated_server):
    with _channel(gated_server.address) as channel:
        slow = SlowSender(channel, delay_s=10)
        code, details, _ = slow.outcome()
        slow.stop()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
    assert "--message-read-timeout-s" in details


def test_a_connection_reads_one_message_at_a_time_others_are_not_held_up(gated_server):
    with _channel(gated_server.address) as slow_channel, _channel(gated_server.address) as other:
        slow = SlowSender(slow_channel, delay_s=10)
        time.sleep(0.2)  # its read has started
        code, details = _infer(slow_channel, timeout=5)  # same connection: waits for its turn
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "--max-reads-per-peer" in details, details
        started = time.perf_counter()
        assert _infer(other, timeout=5) == (grpc.StatusCode.OK, "")  # another connection: at once
        assert time.perf_counter() - started < READ_TIMEOUT_S / 2
        assert slow.outcome()[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        slow.stop()
        assert _infer(slow_channel, timeout=5) == (grpc.StatusCode.OK, "")  # its turn is back


def _stream_infer(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        answers = list(stub.ModelStreamInfer(iter([_good_request()]), timeout=5))
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, answers[0].error_message


def test_calls_wait_for_room_while_health_answers(gated_server):
    """Two slow senders hold the room for two largest messages: a third call waits for room up to
    its deadline; health answers meanwhile; once the readers are cut, calls go through again."""
    channels = [_channel(gated_server.address) for _ in range(3)]
    try:
        slow = [SlowSender(channel, delay_s=10) for channel in channels[:2]]
        time.sleep(0.2)
        code, details = _infer(channels[2], timeout=5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "--max-received-bytes" in details, details
        status, body = _http_infer(gated_server.http_url)  # HTTP bodies share the budget
        assert status == 504 and "--max-received-bytes" in body, (status, body)
        health = health_pb2_grpc.HealthStub(channels[2])
        started = time.perf_counter()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
        assert time.perf_counter() - started < 0.5
        for sender in slow:
            assert sender.outcome()[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            sender.stop()
        assert _infer(channels[2], timeout=5) == (grpc.StatusCode.OK, "")  # room again once they are cut
        assert _http_infer(gated_server.http_url)[0] == 200
    finally:
        for channel in channels:
            channel.close()


def test_a_streams_frame_waits_for_room_like_a_call(gated_server):
    """Stream frames are read under the same budget: while two slow senders hold it, a stream's
    frame is not read and the stream ends when its wait passes the deadline cap; once the
    senders are cut, streams are answered again."""
    channels = [_channel(gated_server.address) for _ in range(3)]
    try:
        slow = [SlowSender(channel, delay_s=10) for channel in channels[:2]]
        time.sleep(0.2)
        code, details = _stream_infer(channels[2])
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "--max-received-bytes" in details, details
        for sender in slow:
            assert sender.outcome()[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            sender.stop()
        assert _stream_infer(channels[2]) == (grpc.StatusCode.OK, "")
    finally:
        for channel in channels:
            channel.close()


@pytest.mark.parametrize(
    ("method", "fragment"),
    [
        (MODEL_INFER, "not a valid ModelInferRequest"),
        ("/convserve.v1.VisionService/Classify", "could not be parsed"),
        ("/inference.GRPCInferenceService/ModelMetadata", "could not be parsed"),
    ],
)
def test_bytes_that_are_not_the_message_are_invalid_argument(gated_server, method, fragment):
    """gRPC itself answers an unparseable request INTERNAL; it is the client's error."""
    with _channel(gated_server.address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\x0a\x05ab", timeout=5)  # field 1 claims 5 bytes, 2 follow
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in raised.value.details()


@pytest.mark.parametrize(
    "method", ["/inference.GRPCInferenceService/ModelStreamInfer", "/convserve.v1.VisionService/StreamDetect"]
)
def test_a_stream_frame_that_is_not_the_message_ends_the_stream_invalid_argument(gated_server, method):
    with _channel(gated_server.address) as channel:
        call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            list(call(iter([b"\x0a\x05ab"]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in raised.value.details()


def test_a_message_over_the_largest_size_is_refused_by_grpc(gated_server):
    with _channel(gated_server.address) as channel:
        request = hostile.v2_tensor("tiny", (1, 1, 8, 140_000))  # 4.3 MiB
        call = channel.unary_unary(MODEL_INFER, request_serializer=pb.ModelInferRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_refusals_are_counted_and_the_budget_is_free_at_rest(gated_server):
    """Runs last (file order): the tests above ended calls for every reason."""
    with urllib.request.urlopen(gated_server.metrics_url, timeout=10) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    refusals = {
        s.labels["reason"]: s.value
        for s in families["convserve_received_refusals"].samples
        if s.name.endswith("_total")
    }
    assert all(refusals[reason] >= 1 for reason in ("no_room", "no_turn", "read_timeout", "unparseable")), refusals
    (in_use,) = families["convserve_received_bytes"].samples
    assert in_use.value == 0
