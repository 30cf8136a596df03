"""The Python client library and the `convserve classify|detect|...` CLI against real servers.

Scores are checked against ONNX Runtime run in this process; retries, deadlines, tokens and
round-robin balancing run against real servers on loopback (port 0), never against mocks.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest

from entrypoint import main as convserve
from service.client import DeadlineExceeded, Frame, InferenceClient, RetryPolicy, RpcFailed, TlsConfig, VisionClient
from service.client.errors import NotFound, Unauthenticated, Unavailable
from service.postprocess.classify import softmax
from service.server import start_server

from testkit import REPO_ROOT, ServerThread, write_tiny_model
from testkit import test_settings as settings_for

LABELS = ("cat", "dog", "bird")


def digits(count: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded 8x8 gray uint8 images (the tiny model's input size, so resizing is a no-op)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(count)]


def reference_probabilities(repo, images: list[np.ndarray]) -> np.ndarray:
    """What the tiny model says, by ONNX Runtime in this process ([N, 3] softmax)."""
    session = ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([image.astype(np.float32)[None] / 255.0 for image in images])
    return softmax(session.run(["logits"], {"input": batch})[0])


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def requests_counted(server: ServerThread) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("convserve_requests_total{")
    )


class DelayInterceptor(grpc.aio.ServerInterceptor):
    """Holds every call for `delay_s` before handling it: a real server slower than the deadline."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    async def intercept_service(self, continuation, details):
        await asyncio.sleep(self.delay_s)
        return await continuation(details)


def test_classify_matches_onnxruntime_for_every_image_form(tiny_server, tiny_repo, tmp_path):
    images = digits(4)
    expected = reference_probabilities(tiny_repo, images)
    path = tmp_path / "first.png"
    path.write_bytes(png(images[0]))
    tensor = images[3].astype(np.float32)[None] / 255.0  # already preprocessed: CHW float32
    with VisionClient(tiny_server.address) as client:
        reply = client.classify([path, png(images[1]), images[2], tensor], "tiny", top_k=3, request_id="req-42")
    assert (reply.model_name, reply.model_version, reply.request_id) == ("tiny", "1", "req-42")
    assert len(reply.results) == 4
    for result, row in zip(reply.results, expected):
        order = np.argsort(-row, kind="stable")
        assert [p.class_index for p in result.predictions] == list(order)
        assert [p.label for p in result.predictions] == [LABELS[i] for i in order]
        np.testing.assert_allclose([p.score for p in result.predictions], row[order], rtol=1e-5, atol=1e-6)


def test_each_call_gets_its_own_request_id(tiny_server):
    with VisionClient(tiny_server.address) as client:
        ids = {client.classify(digits(1), "tiny").request_id for _ in range(3)}
        long_id = "x" * 200
        echoed = client.classify(digits(1), "tiny", request_id=long_id).request_id
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)
    assert echoed == "x" * 128  # the id the server used (it keeps 128 characters) comes back, not ours


def test_errors_carry_status_and_request_id(tiny_server):
    with VisionClient(tiny_server.address) as client:
        with pytest.raises(NotFound) as caught:
            client.classify(digits(1), "no_such_model", request_id="abc")
    assert caught.value.code.name == "NOT_FOUND" and caught.value.request_id == "abc"
    assert "no_such_model" in str(caught.value) and caught.value.attempts == 1


def test_stream_classify_answers_in_order_with_frame_ids(tiny_server, tiny_repo):
    images = digits(12, seed=3)
    expected = reference_probabilities(tiny_repo, images).argmax(axis=1)
    frames = (Frame(image, frame_id=100 + i, capture_timestamp_us=7 * i) for i, image in enumerate(images))
    with VisionClient(tiny_server.address) as client:
        results = list(client.stream_classify(frames, "tiny", top_k=1, max_pending=4, timeout=30))
        plain = list(client.stream_classify(images[:3], "tiny", timeout=30))
    assert [r.frame_id for r in results] == [100 + i for i in range(12)]
    assert [r.capture_timestamp_us for r in results] == [7 * i for i in range(12)]
    assert all(r.error is None and not r.dropped and r.model_name == "tiny" for r in results)
    assert [r.result.top.class_index for r in results] == list(expected)
    assert [r.frame_id for r in plain] == [0, 1, 2]


def test_retries_unavailable_until_the_server_accepts(tiny_server):
    """The server refuses calls with UNAVAILABLE (as while shutting down), then accepts again."""
    lifecycle = tiny_server.running.lifecycle
    lifecycle.accepting = False
    with VisionClient(tiny_server.address, retries=0) as client:
        with pytest.raises(Unavailable):
            client.classify(digits(1), "tiny")
    reopen = threading.Timer(0.4, lambda: setattr(lifecycle, "accepting", True))
    started = time.monotonic()
    reopen.start()
    try:
        with VisionClient(tiny_server.address, retries=8, backoff=(0.05, 0.2)) as client:
            reply = client.classify(digits(1), "tiny")
    finally:
        reopen.cancel()
        lifecycle.accepting = True
    assert reply.results[0].predictions and time.monotonic() - started >= 0.4


def test_retry_budget_is_bounded_and_reported(tiny_server):
    tiny_server.running.lifecycle.accepting = False
    try:
        with VisionClient(tiny_server.address, retries=2, backoff=(0.01, 0.02)) as client:
            with pytest.raises(Unavailable) as caught:
                client.classify(digits(1), "tiny")
    finally:
        tiny_server.running.lifecycle.accepting = True
    assert caught.value.attempts == 3 and "after 3 attempts" in str(caught.value)


def test_retries_until_a_server_listens_on_the_port(tmp_path):
    """Nothing listens on the port (connection refused), then a server starts there."""
    repo = tmp_path / "repo"
    write_tiny_model(repo)
    first = ServerThread(settings_for(repo)).start()
    port = first.running.port
    first.stop()
    second = None

    def start_again():
        nonlocal second
        time.sleep(0.5)
        second = ServerThread(settings_for(repo, port=port)).start()

    starter = threading.Thread(target=start_again)
    starter.start()
    try:
        with VisionClient(f"127.0.0.1:{port}", timeout=30, retries=12, backoff=(0.1, 0.5)) as client:
            reply = client.classify(digits(1), "tiny")
    finally:
        starter.join(60)
        if second is not None:
            second.stop()
    assert reply.model_name == "tiny"


def test_deadline_exceeded_is_a_clear_exception_and_not_retried(tiny_repo):
    server = ServerThread(settings_for(tiny_repo))
    server.thread.start()
    server.running = server.call(start_server(server.settings, interceptors=[DelayInterceptor(1.5)]), timeout=120)
    try:
        with VisionClient(server.address, timeout=0.3, retries=3) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught:
                client.classify(digits(1), "tiny")
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert elapsed < 1.2 and caught.value.attempts == 1
    assert isinstance(caught.value, RpcFailed) and caught.value.code.name == "DEADLINE_EXCEEDED"


def test_bearer_token_is_sent(tmp_path, tiny_repo):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = ServerThread(settings_for(tiny_repo, auth_token_file=tokens)).start()
    try:
        with VisionClient(server.address) as client:
            with pytest.raises(Unauthenticated):
                client.classify(digits(1), "tiny")
        with VisionClient(server.address, token="s3cret") as client:
            assert client.classify(digits(1), "tiny").results[0].predictions
    finally:
        server.stop()


def test_round_robin_spreads_calls_over_every_address(tiny_repo):
    servers = [ServerThread(settings_for(tiny_repo)).start() for _ in range(2)]
    try:
        target = "ipv4:" + ",".join(s.address for s in servers)
        with VisionClient(target, load_balancing="round_robin") as client:
            for _ in range(10):
                client.classify(digits(1), "tiny")
        counts = [requests_counted(s) for s in servers]
    finally:
        for server in servers:
            server.stop()
    assert sum(counts) == 10 and min(counts) >= 3, counts


def test_v2_infer_matches_onnxruntime(tiny_server, tiny_repo):
    images = digits(2, seed=5)
    batch = np.stack([image.astype(np.float32)[None] / 255.0 for image in images])
    with InferenceClient(tiny_server.address) as client:
        result = client.infer("tiny", {"input": batch})
        metadata = client.model_metadata("tiny")
        top = client.infer("tiny", {"input": np.array([png(images[0])], dtype=object)}, outputs={"logits": 1})
    session = ort.InferenceSession(str(tiny_repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"input": batch})[0]
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-5, atol=1e-6)
    assert metadata.inputs[0].name == "input" and metadata.outputs[0].name == "logits"
    assert (
        top.outputs["logits"]
        .reshape(-1)[0]
        .decode()
        .endswith(f":{expected[0].argmax()}:{LABELS[expected[0].argmax()]}")
    )


def test_retry_delays_grow_and_stay_within_bounds():
    policy = RetryPolicy(retries=5, backoff_initial_s=0.1, backoff_max_s=0.5)
    rng = random.Random(0)
    for retry, ceiling in enumerate((0.1, 0.2, 0.4, 0.5, 0.5)):
        delays = [policy.delay_s(retry, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
    assert policy.retryable(grpc.StatusCode.UNAVAILABLE) and not policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert RetryPolicy(retry_resource_exhausted=True).retryable(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert not policy.retryable(grpc.StatusCode.DEADLINE_EXCEEDED)


# --- the command line ----------------------------------------------------------------------------


def test_cli_json_matches_the_client(tiny_server, tmp_path, capsys):
    images = digits(3, seed=9)
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"img{index}.png")
        paths[-1].write_bytes(png(image))
    code = convserve(
        [
            "classify",
            *map(str, paths),
            "--model",
            "tiny",
            "--host",
            tiny_server.address,
            "--top-k",
            "2",
            "--json",
            "--batch-size",
            "2",
        ]
    )
    document = json.loads(capsys.readouterr().out)
    with VisionClient(tiny_server.address) as client:
        reply = client.classify(paths, "tiny", top_k=2)
    assert code == 0 and document["model_name"] == "tiny" and document["model_version"] == "1"
    assert [r["image"] for r in document["results"]] == [str(p) for p in paths]
    for row, result in zip(document["results"], reply.results):
        assert [p["class_index"] for p in row["predictions"]] == [p.class_index for p in result.predictions]
        np.testing.assert_allclose(
            [p["score"] for p in row["predictions"]], [p.score for p in result.predictions], rtol=1e-6
        )


def test_cli_out_writes_each_result_as_json_and_same_named_images_do_not_collide(tiny_server, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    images = digits(3, seed=4)
    paths = [first / "frame.png", second / "frame.png", first / "other.png"]
    for path, image in zip(paths, images):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png(image))
    out = tmp_path / "out"
    arguments = ["classify", *map(str, paths), "--model", "tiny", "--host", tiny_server.address, "--out", str(out)]
    assert convserve([*arguments, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    names = ["frame.classify.json", "frame-2.classify.json", "other.classify.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name, row in zip(names, document["results"]):
        assert json.loads((out / name).read_text())["predictions"] == row["predictions"]
    assert [row["files"] for row in document["results"]] == [[str(out / name)] for name in names]


def test_cli_help_shows_every_default(capsys):
    """A user learns the timeout, retries and batch size from --help, not from the source."""
    with pytest.raises(SystemExit):
        convserve(["classify", "--help"])
    options = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]
    entries = {entry.split()[0]: entry for entry in re.split(r" (?=--[a-z])", options)}
    for option, default in (("--timeout", "10.0"), ("--retries", "3"), ("--batch-size", "8")):
        assert entries[option].endswith(f"(default: {default})"), entries[option]
    assert "(0: the model's default)" in entries["--top-k"] and "(default: 0)" not in entries["--top-k"]
    assert "default: None" not in options and "CONVSERVE_TOKEN" in entries["--token"]


def test_cli_prints_a_table(tiny_server, tmp_path, capsys):
    path = tmp_path / "one.png"
    path.write_bytes(png(digits(1)[0]))
    assert convserve(["classify", str(path), "--model", "tiny", "--host", tiny_server.address, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model tiny version 1" and lines[1].split() == ["image", "rank", "label", "class", "score"]
    assert len(lines) == 3 + 3 and {line.split()[2] for line in lines[3:]} == set(LABELS)


def test_cli_unknown_model_exits_1_with_not_found(tiny_server, tmp_path):
    path = tmp_path / "one.png"
    path.write_bytes(png(digits(1)[0]))
    done = subprocess.run(
        [sys.executable, "entrypoint.py", "classify", str(path), "--model", "nope", "--host", tiny_server.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "NOT_FOUND" in done.stderr and "nope" in done.stderr and done.stdout == ""


def test_cli_usage_errors_exit_2(tiny_server, tmp_path, capsys):
    assert convserve(["classify", str(tmp_path / "missing.png"), "--model", "tiny", "--host", tiny_server.address]) == 2
    assert "missing.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        convserve(["classify", str(tmp_path / "x.png")])  # no --model
    assert caught.value.code == 2


# --- the bundled models (these fail until model_repo/ holds them) --------------------------------

EXAMPLES = REPO_ROOT / "examples" / "images"


def test_bundled_lenet5_reads_the_sample_digits(bundled_server):
    manifest = json.loads((EXAMPLES / "manifest.json").read_text())
    names = sorted(n for n, entry in manifest.items() if entry["kind"] == "digit")
    with VisionClient(bundled_server.address) as client:
        reply = client.classify([EXAMPLES / n for n in names], "lenet5", top_k=3)
    correct = sum(r.top.label == str(manifest[n]["label"]) for r, n in zip(reply.results, names))
    assert reply.model_name == "lenet5" and correct >= len(names) - 1
    assert all(r.predictions[0].score >= r.predictions[1].score >= r.predictions[2].score for r in reply.results)


def test_bundled_yolo_grid_detect_and_cli_overlays(bundled_server, tmp_path, capsys):
    scenes = sorted(EXAMPLES.glob("scene_*.jpg"))
    with VisionClient(bundled_server.address) as client:
        reply = client.detect(scenes, "yolo_grid", draw_overlay=True)
    for path, result in zip(scenes, reply.results):
        height, width = cv2.imread(str(path)).shape[:2]
        assert (result.image_width, result.image_height) == (width, height)
        overlay = cv2.imdecode(np.frombuffer(result.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert overlay is not None and overlay.shape[:2] == (height, width)
        for d in result.detections:
            assert 0 <= d.box.x1 <= d.box.x2 <= width and 0 <= d.box.y1 <= d.box.y2 <= height and 0 <= d.score <= 1
    assert sum(len(r.detections) for r in reply.results) > 0
    out = tmp_path / "out"
    code = convserve(
        [
            "detect",
            *map(str, scenes),
            "--model",
            "yolo_grid",
            "--host",
            bundled_server.address,
            "--out",
            str(out),
            "--json",
        ]
    )
    document = json.loads(capsys.readouterr().out)
    expected = [f"{p.stem}.detect.{extension}" for p in scenes for extension in ("jpg", "json")]
    assert code == 0 and sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert [len(r["detections"]) for r in document["results"]] == [len(r.detections) for r in reply.results]
    for path, row in zip(scenes, document["results"]):
        saved = json.loads((out / f"{path.stem}.detect.json").read_text())
        assert saved["detections"] == row["detections"] and saved["detections"]


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory) -> None:
    """A CA, a server certificate for the name `convserve.test` and a client certificate, by openssl."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=directory,
    )
    for name, extension in (("server", "subjectAltName=DNS:convserve.test"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=directory,
        )
        (directory / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=directory,
        )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certificates")
def test_mutual_tls(tmp_path, tiny_repo):
    make_certificates(tmp_path)
    settings = settings_for(
        tiny_repo, tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key", tls_client_ca=tmp_path / "ca.pem"
    )
    server = ServerThread(settings).start()
    try:
        tls = TlsConfig(
            root_ca=tmp_path / "ca.pem",
            client_cert=tmp_path / "client.pem",
            client_key=tmp_path / "client.key",
            server_name="convserve.test",
        )
        with VisionClient(server.address, tls=tls) as client:
            assert client.classify(digits(1), "tiny").results[0].predictions
        without_client_cert = TlsConfig(root_ca=(tmp_path / "ca.pem").read_bytes(), server_name="convserve.test")
        with VisionClient(server.address, tls=without_client_cert, retries=0, timeout=5) as client:
            with pytest.raises(Unavailable):
                client.classify(digits(1), "tiny")
    finally:
        server.stop()


# --- conversions of the other RPCs' replies (their servers are tested on the bundled models) --------


def test_segment_and_explain_replies_become_dataclasses_tables_and_files(tmp_path):
    from service.api.convserve.v1 import vision_pb2 as vpb
    from service.client.render import overlay_files, result_json, results_table, write_overlays
    from service.client.results import activation_map_from_proto, segmentation_from_proto, tensor_from_proto

    label_map = np.zeros((6, 5), np.uint8)
    label_map[2:4, 1:3] = 2
    probabilities = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    segment = vpb.SegmentResult(
        label_map_png=png(label_map),
        width=5,
        height=6,
        overlay_png=png(np.zeros((6, 5, 3), np.uint8)),
        classes=[vpb.ClassPixels(class_index=2, label="square", pixels=4, fraction=4 / 30)],
        probabilities=vpb.Tensor(shape=[3, 4, 4], dtype="float32", data=probabilities.tobytes()),
    )
    seg = segmentation_from_proto(segment)
    np.testing.assert_array_equal(seg.label_map(), label_map)
    np.testing.assert_array_equal(seg.probabilities, probabilities)
    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    cam = activation_map_from_proto(
        vpb.ActivationMap(
            method="cam",
            class_index=1,
            label="dog",
            score=0.75,
            overlay=png(np.zeros((6, 8, 3), np.uint8)),
            raw=vpb.Tensor(shape=[3, 4], dtype="float32", data=raw.tobytes()),
            upsampled=vpb.Tensor(shape=[6, 8], dtype="float32", data=np.zeros((6, 8), np.float32).tobytes()),
        )
    )
    np.testing.assert_array_equal(cam.raw, raw)
    assert cam.upsampled.shape == (6, 8) and tensor_from_proto(vpb.Tensor(shape=[0], dtype="float32")).shape == (0,)
    assert "square" in results_table(["a.png"], [seg]) and "3x4" in results_table(["a.png"], [cam])
    assert result_json(seg)["classes"][0]["pixels"] == 4 and result_json(cam)["raw_shape"] == [3, 4]
    assert sorted(overlay_files("dir/a.png", seg)) == ["a.labels.png", "a.segment.png"]
    assert list(overlay_files("b.jpg", cam)) == ["b.cam.png"]
    written = write_overlays(tmp_path, ["a.png", "b.jpg"], [seg, cam])
    assert [len(paths) for paths in written] == [2, 1] and all(p.stat().st_size > 0 for ps in written for p in ps)


def test_health_reports_serving(tiny_server):
    with VisionClient(tiny_server.address) as client:
        assert client.health() == "SERVING"
