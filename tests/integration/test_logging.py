"""Structured logs of a real `convserve serve` process, in both formats (JSON and key=value).

Each format gets its own server subprocess whose stderr is read line by line. Every line must be
one parseable event; startup, model load (good and broken), unload and shutdown are logged; a
failing request's log line carries the request id that the client sent in `x-request-id` (or, when
it sent none, the id the server generated and returned in the trailing metadata), for unary calls
and for the frames of both kinds of stream; the per-request access log appears at debug level only.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input
from testkit import REPO_ROOT, write_tiny_model

KV_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_kv(line: str) -> dict:
    """Parse one key=value line; the pairs must cover the whole line (nothing unstructured)."""
    pairs = list(KV_PAIR.finditer(line))
    assert pairs and "".join(m.group(0) for m in pairs).rstrip() == line, f"not a key=value line: {line!r}"
    return {m.group(1): json.loads(m.group(2)) if m.group(2).startswith('"') else m.group(2) for m in pairs}


def parse_line(line: str, log_format: str) -> dict:
    if log_format == "json":
        event = json.loads(line)
        assert isinstance(event, dict), line
        return event
    return parse_kv(line)


def test_kv_values_round_trip():
    """Any value, however hostile, stays on one key=value line and parses back."""
    import logging

    from service.logs import KeyValueFormatter

    fields = {
        "event": "x",
        "plain": "abc",
        "spaced": 'a b="c" \\ d',
        "newline": "one\ntwo\r",
        "empty": "",
        "number": 1.5,
        "flag": True,
        "nothing": None,
        "mapping": {"a": [1, "b c"]},
    }
    record = logging.LogRecord("convserve.t", logging.WARNING, __file__, 1, "hello world", None, None)
    record.__dict__.update(fields)
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    event = parse_kv(line)
    assert event["msg"] == "hello world" and event["level"] == "warning"
    assert (event["plain"], event["spaced"], event["newline"], event["empty"]) == (
        "abc",
        'a b="c" \\ d',
        "one\ntwo\r",
        "",
    )
    assert (event["number"], event["flag"], event["nothing"]) == ("1.5", "true", "null")
    assert json.loads(event["mapping"]) == {"a": [1, "b c"]}


def convserve_command() -> list[str]:
    script = Path(sys.executable).with_name("convserve")
    return [str(script)] if script.exists() else [sys.executable, str(REPO_ROOT / "entrypoint.py")]


class ServeProcess:
    """`convserve serve` in a subprocess; its stderr lines are collected as they arrive."""

    def __init__(self, repo: Path, log_format: str, log_level: str):
        self.log_format = log_format
        self.lines: list[str] = []
        self._changed = threading.Condition()
        args = [
            "serve",
            "--model-repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
            "--providers",
            "cpu",
            "--log-format",
            log_format,
            "--log-level",
            log_level,
            "--shutdown-grace-s",
            "0",
            "--drain-timeout-s",
            "2",
            "--preprocess-threads",
            "1",
        ]
        self.proc = subprocess.Popen(
            convserve_command() + args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for(lambda e: e.get("event") == "server_started", timeout=120)
        self.wait_for(lambda e: e.get("event") == "server_ready", timeout=120)
        self.address = f"127.0.0.1:{started['port']}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def events(self) -> list[dict]:
        with self._changed:
            lines = list(self.lines)
        return [parse_line(line, self.log_format) for line in lines]

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        give_up = time.monotonic() + timeout
        while True:
            for event in self.events():
                if predicate(event):
                    return event
            with self._changed:
                remaining = give_up - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError("no such log line; got:\n" + "\n".join(self.lines[-30:]))
                self._changed.wait(min(remaining, 0.5))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=10)
        return code


def png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (9, 9), dtype=np.uint8))
    assert ok
    return data.tobytes()


def v2_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="v2-req")
    append_input(request, "input", np.zeros((1, 1, 8, 8), np.float32))
    return request


def trailer_id(metadata) -> str:
    ids = [value for key, value in metadata or () if key == "x-request-id"]
    assert len(ids) == 1, metadata
    return ids[0]


def is_request(event: dict, request_id: str, code: str | None = None) -> bool:
    return (
        event.get("event") == "request"
        and event.get("request_id") == request_id
        and (code is None or event.get("code") == code)
    )


@pytest.fixture(scope="module", params=[("json", "debug"), ("kv", "info")], ids=["json", "kv"])
def served(request, tmp_path_factory):
    log_format, log_level = request.param
    repo = tmp_path_factory.mktemp(f"logs-{log_format}") / "repo"
    write_tiny_model(repo, "tiny")
    broken = repo / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("name: broken\ntask: classification\nnot_a_field: 1\n")
    process = ServeProcess(repo, log_format, log_level)
    channel = grpc.insecure_channel(process.address)
    yield process, channel
    channel.close()
    process.stop()


def test_startup_and_model_load_are_logged(served):
    process, _ = served
    events = process.events()
    started = next(e for e in events if e.get("event") == "server_started")
    assert started["level"] == "info" and started["logger"] == "convserve.server" and "ts" in started
    ready = next(e for e in events if e.get("event") == "model_ready")
    assert (ready["model"], ready["version"], ready["provider"]) == ("tiny", "1", "cpu")
    failed = next(e for e in events if e.get("event") == "model_load_failed")
    assert failed["level"] == "error" and failed["model"] == "broken" and "config.yaml" in failed["reason"]


def test_failed_request_logs_the_client_request_id(served):
    process, channel = served
    request_id = f"client-{process.log_format}-1"
    with pytest.raises(grpc.RpcError) as info:
        vpb_grpc.VisionServiceStub(channel).Classify(
            vpb.ClassifyRequest(model=vpb.ModelRef(name="nope"), images=[vpb.Image(encoded=png())]),
            metadata=[("x-request-id", request_id)],
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer_id(info.value.trailing_metadata()) == request_id
    line = process.wait_for(lambda e: is_request(e, request_id))
    assert (line["level"], line["code"], line["method"], line["model"]) == ("warning", "NOT_FOUND", "Classify", "nope")
    assert "unknown model 'nope'" in line["error"]


def test_generated_request_id_is_returned_and_logged(served):
    process, channel = served
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2_request("missing-model"))
    request_id = trailer_id(info.value.trailing_metadata())
    assert GENERATED_ID.match(request_id)
    line = process.wait_for(lambda e: is_request(e, request_id))
    assert (line["code"], line["method"]) == ("NOT_FOUND", "ModelInfer")


def test_hostile_request_id_stays_one_parseable_line(served):
    process, channel = served
    request_id = 'a b="c" d=e \\ {"x": 1}'
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            v2_request("nope"), metadata=[("x-request-id", request_id)]
        )
    assert trailer_id(info.value.trailing_metadata()) == request_id
    process.wait_for(lambda e: is_request(e, request_id, "NOT_FOUND"))


def test_access_log_only_at_debug(served):
    process, channel = served
    request_id = f"good-{process.log_format}"
    reply, call = vpb_grpc.VisionServiceStub(channel).Classify.with_call(
        vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=png())]),
        metadata=[("x-request-id", request_id)],
    )
    assert len(reply.results) == 1 and trailer_id(call.trailing_metadata()) == request_id
    if process.log_format == "json":  # this server runs at debug level
        line = process.wait_for(lambda e: is_request(e, request_id, "OK"))
        assert (line["level"], line["model"], line["version"], line["images"]) == ("debug", "tiny", "1", 1)
        assert line["duration_ms"] > 0
    else:  # info level: a successful request is not logged
        marker = f"marker-{time.monotonic_ns()}"
        with pytest.raises(grpc.RpcError):
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                v2_request("nope"), metadata=[("x-request-id", marker)]
            )
        process.wait_for(lambda e: is_request(e, marker))  # logged after the good request
        assert not [e for e in process.events() if e.get("request_id") == request_id]


def test_v2_stream_frames_share_the_call_request_id(served):
    process, channel = served
    request_id = f"v2-stream-{process.log_format}"
    replies = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        iter([v2_request("tiny"), v2_request("nope"), v2_request("tiny")]), metadata=[("x-request-id", request_id)]
    )
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert trailer_id(replies.trailing_metadata()) == request_id
    line = process.wait_for(lambda e: is_request(e, request_id, "NOT_FOUND"))
    assert (line["method"], line["level"]) == ("ModelStreamInfer", "warning")


def test_vision_stream_frame_errors_carry_the_generated_id(served):
    process, channel = served
    frames = [
        vpb.ClassifyFrame(model=vpb.ModelRef(name="tiny"), frame_id=i, image=vpb.Image(encoded=data))
        for i, data in enumerate([png(1), b"not an image", png(2)])
    ]
    replies = vpb_grpc.VisionServiceStub(channel).StreamClassify(iter(frames))
    assert [r.error.code for r in replies] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    request_id = trailer_id(replies.trailing_metadata())
    assert GENERATED_ID.match(request_id)
    line = process.wait_for(lambda e: is_request(e, request_id, "INVALID_ARGUMENT"))
    assert (line["method"], line["model"], line["version"]) == ("StreamClassify", "tiny", "1")
    if process.log_format == "json":  # debug: the good frames are logged under the same id
        process.wait_for(lambda e: is_request(e, request_id, "OK"))
        assert len([e for e in process.events() if is_request(e, request_id)]) == 3


def test_unload_and_shutdown_are_logged_and_every_line_parses(served):
    """Runs last in the module: unloads the model and stops the server."""
    process, channel = served
    pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"))
    process.wait_for(lambda e: e.get("event") == "model_unloaded" and e.get("model") == "tiny")
    assert process.stop() == 0
    events = process.events()  # parses every line: nothing unstructured on stderr
    assert len(events) == len(process.lines) >= 8
    assert [e["event"] for e in events if e.get("event", "").startswith("shutdown")] == [
        "shutdown_started",
        "shutdown_done",
    ]
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in events)
