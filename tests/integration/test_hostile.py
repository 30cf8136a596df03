"""Hostile input against a real `convserve serve` process: each attack gets its precise status fast,
and the server stays unharmed.

One server (a child process, so its memory is its own: VmRSS from /proc/<pid>/status) runs the
bundled fcn8s and yolo_grid, a tiny classifier and a slow one. A monitor process times a health
check and a good inference request every 20 ms and samples the server's RSS for the whole module;
the last test asserts the latency p99, that nothing good failed, and the memory bounds. (The
slowest samples fall while a 61 MiB message is received and parsed, which gRPC does on the event
loop before any server code runs, and during the burst of concurrent fcn8s requests.) The tests
run in file order (pytest's default) and share the server, as the attacks would share a replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import yaml

from testkit import REPO_ROOT, ServerProcess, copy_bundled_model, slow_classifier_onnx, write_tiny_model
from bench import hostile_requests as hostile
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAST_S = 1.0
RECEIVED_MIB = 128  # the server's --max-received-bytes: two messages of the largest size read at once
RECEIVE_WAVE_S = 4 * FAST_S  # 8 messages of 59 MB, two at a time: the last waits for three pairs
MIB = 2**20
FCN8S_REQUEST, FCN8S_QUEUE = 4 * MIB, 8 * MIB  # the test repository's fcn8s budgets
ACTIVATION_FACTOR = 20  # fcn8s activations per input byte (`python -m bench.ort_memory`: ~17-19)
ALLOWANCE_MIB = 300
STARTED: list[tuple[float, str]] = []  # (time.time(), test name): to name the test behind a slow sample


@pytest.fixture(autouse=True)
def _note_start(request):
    STARTED.append((time.time(), request.node.name))
    yield


def _configure(directory, batching: dict, runtime: dict) -> None:
    path = directory / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("batching", {}).update(batching)
    data.setdefault("runtime", {}).update(runtime)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _write_repo(repo):
    write_tiny_model(repo, "tiny", queue=256)
    slow = write_tiny_model(repo, "slow", queue=256)
    slow_classifier_onnx(slow / "1" / "model.onnx", layers=24)
    _configure(slow, {}, {"intra_op_threads": 1})
    one_core = {"intra_op_threads": 1}  # the other core answers health and the good requests
    fcn8s_budget = {"max_request_bytes": FCN8S_REQUEST, "max_queue_bytes": FCN8S_QUEUE}
    _configure(copy_bundled_model("fcn8s", repo), fcn8s_budget, one_core)
    yolo_budget = {"max_queue_bytes": 8 * MIB, "max_request_bytes": 8 * MIB}
    _configure(copy_bundled_model("yolo_grid", repo), yolo_budget, one_core)


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Attack:
    """Channel and stubs of one attacking client; `expect` times a call and checks its status."""

    def __init__(self, address: str):
        options = [
            ("grpc.max_send_message_length", 128 * MIB),
            ("grpc.max_receive_message_length", 128 * MIB),
            ("grpc.use_local_subchannel_pool", 1),
        ]  # a connection of its own: its own peer address
        self.channel = grpc.insecure_channel(address, options=options)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.vision = vpb_grpc.VisionServiceStub(self.channel)

    def expect(self, code, call, request, *, within=FAST_S, timeout=30):
        started = time.perf_counter()
        try:
            call(request, timeout=timeout)
            got, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            got, details = exc.code(), exc.details() or ""
        seconds = time.perf_counter() - started
        assert got == code, f"expected {code.name}, got {got.name}: {details[:300]}"
        assert seconds < within, f"{code.name} took {seconds:.2f} s (limit {within} s)"
        assert len(details) < 1200, f"status message of {len(details)} characters"
        return details


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hostile") / "repo"
    _write_repo(repo)
    server = ServerProcess(
        repo,
        "--max-concurrent-streams",
        "6",
        "--max-streams-per-peer",
        "2",
        "--stream-idle-timeout-s",
        "0.5",
        "--drain-timeout-s",
        "5",
        "--max-received-bytes",
        str(RECEIVED_MIB * MIB),
    )
    monitor = None
    try:
        server.wait_serving()
        attack = Attack(server.address)
        for _ in range(3):  # warm the paths the monitor and the attacks use, then take the baseline
            attack.expect(grpc.StatusCode.OK, attack.v2.ModelInfer, hostile.v2_tensor("tiny", (1, 1, 8, 8)))
            attack.expect(grpc.StatusCode.OK, attack.v2.ModelInfer, hostile.v2_tensor("fcn8s", (1, 3, 64, 64)))
        start_rss = _rss_mib(server.proc.pid)
        command = [sys.executable, "-c", hostile.MONITOR, server.address, str(server.proc.pid), "0.01"]
        monitor = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        yield {"server": server, "attack": attack, "repo": repo, "start_rss": start_rss, "monitor": monitor}
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
        server.kill()


def test_segmenter_images_are_bounded_by_the_request_budget(hostile_server):
    """A 3162 x 3162 PNG (a few KB) and a 1 x 1,000,000 strip are downscaled into the budget and
    answered at their full size; a side over the decoder's limit is refused by name."""
    attack = hostile_server["attack"]
    for width, height in ((3162, 3162), (1_000_000, 1)):
        request = hostile.segment("fcn8s", hostile.encoded_png(width, height))
        assert request.ByteSize() < 64 * 1024
        started = time.perf_counter()
        response = attack.vision.Segment(request, timeout=30)
        seconds = time.perf_counter() - started
        assert (response.results[0].width, response.results[0].height) == (width, height)
        # the model's part is bounded by the budget; the mask is still made at the original size, and
        # that (bilinear logits, ~70 ms a megapixel on these cores) is what a 10 MP answer costs
        assert seconds < FAST_S * max(1.0, width * height / 4e6), f"{width}x{height}: {seconds:.2f} s"
    details = attack.expect(INVALID, attack.vision.Segment, hostile.segment("fcn8s", hostile.png_header(10_000_000, 1)))
    assert "1048576" in details


def test_overlay_originals_are_bounded_before_decoding(hostile_server):
    """Overlays keep every decoded original: 16 headers of 40 megapixels are refused from the headers."""
    attack = hostile_server["attack"]
    request = vpb.SegmentRequest(
        model=vpb.ModelRef(name="fcn8s"), overlay=True, images=[vpb.Image(encoded=hostile.png_header(6324, 6324))] * 16
    )
    assert "overlays" in attack.expect(INVALID, attack.vision.Segment, request)


def test_masks_over_the_servers_decoded_bytes_are_refused_from_the_headers(hostile_server):
    """12 headers of 40 megapixels (each inside --max-pixels) would hold 12 full-size masks and a
    decode, 600 MB, over the default --max-decoded-bytes (320 MiB): RESOURCE_EXHAUSTED at once."""
    attack = hostile_server["attack"]
    request = vpb.SegmentRequest(
        model=vpb.ModelRef(name="fcn8s"), images=[vpb.Image(encoded=hostile.png_header(6324, 6324))] * 12
    )
    details = attack.expect(grpc.StatusCode.RESOURCE_EXHAUSTED, attack.vision.Segment, request)
    assert "--max-decoded-bytes 335544320" in details


def test_segmenter_tensors_over_budget_or_off_stride_are_invalid(hostile_server):
    attack = hostile_server["attack"]
    for shape, fragment in (
        ((1, 3, 1, 1048576), "max_request_bytes"),
        ((1, 3, 1, 2048), "stride 32"),
        ((1, 3, 40, 40), "stride 32"),
        ((1, 3, 0, 0), "at least 1"),
        ((1, 3, 1024, 1024), "max_request_bytes"),
    ):
        assert fragment in attack.expect(INVALID, attack.v2.ModelInfer, hostile.v2_tensor("fcn8s", shape))


def test_queue_bytes_are_bounded_and_the_excess_refused_at_once(hostile_server):
    """12 concurrent requests at the per-request budget: the queue holds two, the rest are
    RESOURCE_EXHAUSTED immediately, every admitted one is answered."""
    attack = hostile_server["attack"]
    request = hostile.v2_tensor("fcn8s", (1, 3, 576, 576))  # 3.98 MB of the 4 MiB budget
    assert request.ByteSize() <= FCN8S_REQUEST
    outcomes = []

    def one(_):
        started = time.perf_counter()
        try:
            attack.v2.ModelInfer(request, timeout=30)
            outcomes.append(("OK", time.perf_counter() - started))
        except grpc.RpcError as exc:
            outcomes.append((exc.code().name, time.perf_counter() - started))

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(12)))
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes.count("RESOURCE_EXHAUSTED") >= 5 and codes.count("OK") >= 1, codes
    assert max(seconds for code, seconds in outcomes if code == "RESOURCE_EXHAUSTED") < FAST_S


def test_lying_image_headers_are_refused_before_decoding(hostile_server):
    attack = hostile_server["attack"]
    for data in (hostile.lying_jpeg(), hostile.lying_tiff()):
        assert len(data) < 400
        details = attack.expect(INVALID, attack.vision.Classify, hostile.classify("tiny", data))
        assert "30000x30000" in details


def test_million_empty_bytes_elements_are_refused_without_splitting(hostile_server):
    attack = hostile_server["attack"]
    request = hostile.empty_bytes_elements("tiny")
    assert request.ByteSize() > 60 * MIB
    assert "over the limit of 64" in attack.expect(INVALID, attack.v2.ModelInfer, request)


def test_concurrent_oversized_messages_are_read_a_few_at_a_time(hostile_server):
    """Eight clients send a 59 MB tensor each at once to the tiny classifier (the wrong shape, so
    each is refused as soon as it is read). gRPC read every such message as it came: before the
    received-bytes gate, 72 of them at 24 at a time took a server to 2.8 GB. Now at most
    --max-received-bytes / --max-message-bytes are read at once, and each answer still comes fast.
    (Each read still costs the event loop gRPC's copy of the message into one bytes object, tens of
    milliseconds at this size, so the suite sends eight; bench.memory_worst_case sends 72.)"""
    attackers = [Attack(hostile_server["server"].address) for _ in range(8)]
    request = hostile.oversized_tensor("tiny")
    assert request.ByteSize() > 59e6
    try:
        with ThreadPoolExecutor(8) as pool:
            details = list(
                pool.map(lambda a: a.expect(INVALID, a.v2.ModelInfer, request, within=RECEIVE_WAVE_S), attackers)
            )
    finally:
        for attacker in attackers:
            attacker.channel.close()
    assert all("shape" in text for text in details), details[:2]


def test_huge_class_filter_is_invalid_with_a_short_message(hostile_server):
    attack = hostile_server["attack"]
    request = hostile.detect_with_class_filter("yolo_grid", hostile.encoded_png(64, 64))
    details = attack.expect(INVALID, attack.vision.Detect, request)
    assert "class_filter" in details and len(details) < 200


def test_long_model_name_in_repository_load_is_a_client_error_without_the_path(hostile_server):
    attack, repo = hostile_server["attack"], hostile_server["repo"]
    request = pb.RepositoryModelLoadRequest(model_name="m" * 300)
    details = attack.expect(INVALID, attack.v2.RepositoryModelLoad, request)
    assert str(repo) not in details and "File name too long" not in details
    missing = pb.RepositoryModelLoadRequest(model_name="nope")
    attack.expect(grpc.StatusCode.NOT_FOUND, attack.v2.RepositoryModelLoad, missing)


def test_alias_bomb_and_oversized_configs_fail_their_load_with_a_short_reason(hostile_server):
    attack, repo = hostile_server["attack"], hostile_server["repo"]
    for name, text in (("laughs", hostile.billion_laughs_yaml()), ("huge", "description: '" + "x" * 300_000 + "'\n")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.yaml").write_text(text)
        details = attack.expect(
            grpc.StatusCode.UNAVAILABLE, attack.v2.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name)
        )
        assert ("YAML aliases" if name == "laughs" else "over the limit") in details
    index = attack.v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    reasons = {model.name: model.reason for model in index.models}
    assert "YAML aliases" in reasons["laughs"] and len(reasons["laughs"]) < 1200
    assert index.ByteSize() < 64 * 1024


def _held_stream(stub, model: str, keep_sending: bool):
    """Open a StreamClassify and send a frame; then, until released, a frame every 0.1 s
    (`keep_sending`) or nothing (an idle stream)."""
    release = threading.Event()
    image = vpb.Image(encoded=hostile.encoded_png(16, 16))

    def requests():
        index = 0
        while True:
            yield vpb.ClassifyFrame(model=vpb.ModelRef(name=model), frame_id=index, image=image)
            index += 1
            if not keep_sending or release.wait(0.1):
                break
        release.wait(30)

    return stub.StreamClassify(requests(), timeout=30), release


def test_one_connection_cannot_take_every_stream_slot(hostile_server):
    server = hostile_server["server"]
    attacker, other = Attack(server.address), Attack(server.address)
    held = [_held_stream(attacker.vision, "tiny", keep_sending=True) for _ in range(2)]
    released = []
    try:
        for call, _ in held:
            assert next(call).result.predictions  # both streams are open and answering
        extra, release = _held_stream(attacker.vision, "tiny", keep_sending=True)
        released.append(release)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            next(extra)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "connection" in refused.value.details() and time.perf_counter() - started < FAST_S
        fair, release = _held_stream(other.vision, "tiny", keep_sending=True)  # another client still gets one
        released.append(release)
        assert next(fair).result.predictions
    finally:
        for _, release in held:
            release.set()
        for release in released:
            release.set()
        attacker.channel.close()
        other.channel.close()


def test_idle_stream_is_closed_and_frees_its_slot(hostile_server):
    attack = Attack(hostile_server["server"].address)
    try:
        call, release = _held_stream(attack.vision, "tiny", keep_sending=False)
        assert next(call).result.predictions
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as closed:
            next(call)
        release.set()
        assert closed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.4 < time.perf_counter() - started < FAST_S, "closed after the idle timeout (0.5 s)"
    finally:
        attack.channel.close()


def test_load_during_unload_is_won_by_the_later_call(hostile_server):
    """Unload drains queued work; a Load sent meanwhile wins, and the index shows what it returned."""
    attack = hostile_server["attack"]
    work = [attack.v2.ModelInfer.future(hostile.v2_tensor("slow", (8, 1, 8, 8)), timeout=30) for _ in range(4)]
    time.sleep(0.05)
    unload = attack.v2.RepositoryModelUnload.future(pb.RepositoryModelUnloadRequest(model_name="slow"), timeout=30)
    time.sleep(0.05)
    load = attack.v2.RepositoryModelLoad.future(pb.RepositoryModelLoadRequest(model_name="slow"), timeout=30)
    unload.result()
    load.result()
    for future in work:  # queued before the unload: drained, never dropped
        assert future.result().outputs[0].shape == [8, 3]
    models = attack.v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5).models
    index = {m.name: (m.state, m.reason) for m in models}
    assert index["slow"] == ("READY", ""), index["slow"]
    attack.expect(grpc.StatusCode.OK, attack.v2.ModelInfer, hostile.v2_tensor("slow", (1, 1, 8, 8)))
    attack.v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="slow"), timeout=30)
    index = {m.name: m.state for m in attack.v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5).models}
    assert index["slow"] == "UNAVAILABLE"


def test_server_stayed_responsive_and_bounded_throughout(hostile_server):
    """Health and a good request kept answering (p99 < 100 ms) and memory stayed bounded (VmRSS)."""
    monitor, server = hostile_server["monitor"], hostile_server["server"]
    time.sleep(1.0)  # a last second of good traffic after the attacks
    out, _ = monitor.communicate("", timeout=30)
    samples = json.loads(out)
    assert not samples["failures"], samples["failures"][:5]
    slowest = [
        f"{key} {ms:.0f} ms during {next((n for w, n in reversed(STARTED) if w <= t), '-')}"
        for key, t, ms in sorted(samples["timeline"], key=lambda item: -item[2])[:4]
    ]
    print("slowest samples:", slowest)
    for key in ("health_ms", "infer_ms"):
        assert len(samples[key]) > 50
        p99 = float(np.percentile(samples[key], 99))
        values = samples[key]
        print(f"{key}: n={len(values)} p50={np.median(values):.1f} p99={p99:.1f} max={max(values):.1f}")
        assert p99 < 100, f"{key} p99 {p99:.1f} ms; slowest: {slowest}"
    start, end = hostile_server["start_rss"], _rss_mib(server.proc.pid)
    peak = max(samples["rss_mib"])
    # fcn8s's and yolo_grid's queues (fcn8s's activations with them), and the request messages read or held
    budget = start + (FCN8S_QUEUE * (1 + ACTIVATION_FACTOR) + 16 * MIB) / MIB + RECEIVED_MIB
    print(f"server VmRSS: start {start:.0f} MiB, peak {peak:.0f} MiB, end {end:.0f} MiB, budget {budget:.0f} MiB")
    assert end - start < ALLOWANCE_MIB, f"RSS grew {end - start:.0f} MiB over the suite"
    assert peak < budget + ALLOWANCE_MIB, f"RSS peaked at {peak:.0f} MiB, budget {budget:.0f} + {ALLOWANCE_MIB} MiB"


def test_bad_token_file_is_a_clean_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (tmp_path / "missing", empty):
        command = [
            sys.executable,
            "-m",
            "entrypoint",
            "serve",
            "--model-repo",
            str(tmp_path),
            "--auth-token-file",
            str(path),
        ]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr[-500:]
        assert "auth_token_file" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_drains_admitted_requests(tmp_path):
    """Requests admitted before shutdown closed admission (some still decoding) are answered, never
    refused by a closing batcher; later ones get the admission refusal."""
    write_tiny_model(tmp_path / "repo", queue=256)
    server = ServerProcess(tmp_path / "repo", "--shutdown-grace-s", "0.2", "--drain-timeout-s", "10")
    photo = hostile.encoded_png(2000, 1500)
    outcomes: list[tuple[str, str]] = []
    try:
        server.wait_serving()
        stop = threading.Event()

        def client():
            with grpc.insecure_channel(server.address) as channel:
                stub = vpb_grpc.VisionServiceStub(channel)
                while not stop.is_set():
                    try:
                        stub.Classify(hostile.classify("tiny", photo), timeout=10)
                        outcomes.append(("OK", ""))
                    except grpc.RpcError as exc:
                        outcomes.append((exc.code().name, exc.details() or ""))
                        return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.proc.send_signal(15)
        for thread in threads:
            thread.join(30)
        stop.set()
        assert server.proc.wait(30) == 0
    finally:
        server.kill()
    assert sum(code == "OK" for code, _ in outcomes) > 10
    refused = [(code, details) for code, details in outcomes if code != "OK"]
    assert all(code == "UNAVAILABLE" and "server is shutting down" in details for code, details in refused), refused
