"""`make demo`: start a server on the bundled models and call every vision RPC with the sample images.

    python -m examples.demo            # a finite run: prints the browser console's URL, then stops
    python -m examples.demo --serve    # the same, then keeps the server (and the console) up until Ctrl-C

What it does, in under a minute on a laptop CPU:
1. starts `convserve serve --model-repo model_repo --port 0 --metrics-port 0 --providers cpu` as a
   subprocess and reads the ports it chose from its JSON startup log line (event "server_started");
2. waits until gRPC health says SERVING;
3. Classify (MNIST models, then lenet5's held-out confusion matrix read from its model card),
   Detect (yolo_grid), Segment (fcn8s), Explain (gap_cnn, else lenet5),
   StreamClassify / StreamDetect, and one Open Inference Protocol (V2) ModelInfer, printing tables
   and writing overlay images to demo-output/; a model not in model_repo/ is skipped with a note;
4. calls the Open Inference Protocol and the vision API over HTTP (the REST port) and prints the
   browser console's URL;
5. prints the request count from the server's Prometheus /metrics;
6. with --serve, waits for Ctrl-C; then stops the server with SIGTERM and checks that it exited 0.
Exit code 0 when every step worked, 1 otherwise. Needs only the serving dependencies.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.client import InferenceClient, RpcFailed, VisionClient
from service.client.render import format_table, results_table, write_overlays

REPO = Path(__file__).resolve().parents[1]
MODEL_REPO = REPO / "model_repo"
IMAGES = REPO / "examples" / "images"
OUTPUT = REPO / "demo-output"
STARTUP_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 30.0
DIGIT_MODELS = ("lenet5", "simple_cnn", "bn_cnn")
CONFUSION_MODEL = "lenet5"


def confusion_table(model: str, version: int = 1) -> str:
    """The held-out confusion matrix recorded in the model card (rows = predicted, columns = true)."""
    card = json.loads((MODEL_REPO / model / str(version) / "model_card.json").read_text(encoding="utf-8"))
    matrix = card["training"]["metrics"]["confusion_matrix"]
    rows = [[f"pred {label}", *counts] for label, counts in zip(matrix["labels"], matrix["counts"])]
    title = (
        f"\n== {model} v{version}: held-out confusion matrix from its model card "
        f"(rows = {matrix['rows']}, columns = {matrix['columns']} class)"
    )
    return title + "\n" + format_table(["", *(f"true {label}" for label in matrix["labels"])], rows)


class ServerProcess:
    """`convserve serve` in a subprocess; its log goes to demo-output/server.log and a tail buffer."""

    def __init__(self, log_path: Path, http_port: int = 0):
        self.log_path = log_path
        self.http_port = http_port
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self.ports: dict | None = None
        self._started = threading.Event()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            str(REPO / "entrypoint.py"),
            "serve",
            "--model-repo",
            str(MODEL_REPO),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--http-port",
            str(self.http_port),
            "--providers",
            "cpu",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--shutdown-grace-s",
            "0",
            "--poll-interval-s",
            "0",
        ]
        print(f"$ convserve {' '.join(command[2:])}".replace(str(REPO) + "/", ""))
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        with self.log_path.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip())
                event = _json_event(line)
                if event.get("event") == "server_started":
                    self.ports = {
                        "port": event["port"],
                        "metrics_port": event.get("metrics_port"),
                        "http_port": event.get("http_port"),
                    }
                    self._started.set()
        self._started.set()  # the process ended: wake the waiter

    def wait_started(self, timeout: float) -> dict:
        if not self._started.wait(timeout) or self.ports is None:
            raise DemoError(f"the server did not log 'server_started' within {timeout:.0f} s", self.log_tail())
        return self.ports

    def stop(self) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise DemoError(
                f"the server did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM", self.log_tail()
            ) from None

    def log_tail(self) -> str:
        return "\n".join(self.tail)


class DemoError(Exception):
    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


def _json_event(line: str) -> dict:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def wait_serving(client: VisionClient, server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DemoError(
                f"the server exited with code {server.process.returncode} while starting", server.log_tail()
            )
        try:
            status = client.health(timeout=2.0)
        except RpcFailed as exc:
            status = f"{exc.code.name}: {exc.details}"
        if status == "SERVING":
            return
        time.sleep(0.2)
    raise DemoError(f"health did not turn SERVING within {timeout:.0f} s (last: {status})", server.log_tail())


@dataclass
class Demo:
    client: VisionClient
    v2: InferenceClient
    manifest: dict
    ready: set[str]
    failures: list[str] = field(default_factory=list)

    def images(self, kind: str) -> list[Path]:
        return [IMAGES / name for name, entry in sorted(self.manifest.items()) if entry["kind"] == kind]

    def available(self, model: str, rpc: str) -> bool:
        if not (MODEL_REPO / model / "config.yaml").is_file():
            print(f"note: {rpc} on '{model}' skipped: the model is not in model_repo/ yet")
            return False
        if model not in self.ready:
            self.failures.append(
                f"{rpc} on '{model}': the model is in model_repo/ but not ready (see demo-output/server.log)"
            )
            print(f"FAILED: {self.failures[-1]}")
            return False
        return True

    def show(self, title: str, reply, paths: list[Path]) -> None:
        names = [path.name for path in paths]
        print(f"\n== {title}: model {reply.model_name} v{reply.model_version}, request id {reply.request_id}")
        print(results_table(names, reply.results))
        for written in write_overlays(OUTPUT, names, reply.results):
            for path in written:
                print(f"   wrote {path.relative_to(REPO)}")

    def classify(self) -> None:
        digits = self.images("digit")
        for model in DIGIT_MODELS:
            if self.available(model, "Classify"):
                reply = self.client.classify(digits, model, top_k=3)
                self.show(f"Classify {len(digits)} digits", reply, digits)
                correct = sum(r.top.label == str(self.manifest[p.name]["label"]) for r, p in zip(reply.results, digits))
                print(f"   top-1 matches the digit's label on {correct} of {len(digits)} held-out digits")
        if (MODEL_REPO / CONFUSION_MODEL).is_dir():
            print(confusion_table(CONFUSION_MODEL))

    def detect(self) -> None:
        scenes = [p for p in self.images("scene") if p.name.startswith("scene_")]
        if self.available("yolo_grid", "Detect"):
            reply = self.client.detect(scenes, "yolo_grid", draw_overlay=True)
            self.show(f"Detect on {len(scenes)} scenes", reply, scenes)
            expected = sum(len(self.manifest[p.name]["labels"]) for p in scenes)
            print(f"   {sum(len(r.detections) for r in reply.results)} detections; the scenes hold {expected} objects")

    def segment(self) -> None:
        scenes = [p for p in self.images("scene") if p.name.startswith("scene_")]
        if self.available("fcn8s", "Segment"):
            self.show(f"Segment {len(scenes)} scenes", self.client.segment(scenes, "fcn8s", overlay=True), scenes)

    def explain(self) -> None:
        """CAM overlays from gap_cnn (top-1 class) on the object scene and the multi-object scenes."""
        if (MODEL_REPO / "gap_cnn" / "config.yaml").is_file():
            model, images = (
                "gap_cnn",
                [IMAGES / "object_scene.jpg", *(p for p in self.images("scene") if p.name.startswith("scene_"))],
            )
        else:
            print("note: gap_cnn is not in model_repo/ yet; explaining lenet5 instead")
            model, images = "lenet5", self.images("digit")[:2]
        if self.available(model, "Explain"):
            self.show("Explain (class activation map)", self.client.explain(images, model, overlay=True), images)

    def streams(self) -> None:
        digits = self.images("digit")
        model = next((m for m in DIGIT_MODELS if m in self.ready), None)
        if model is not None:
            frames = list(self.client.stream_classify(digits * 2, model, top_k=1, timeout=30.0))
            self.show_frames(f"StreamClassify {len(frames)} frames", model, frames)
        if self.available("yolo_grid", "StreamDetect"):
            scenes = [p for p in self.images("scene") if p.name.startswith("scene_")]
            frames = list(self.client.stream_detect(scenes, "yolo_grid", timeout=30.0))
            self.show_frames(f"StreamDetect {len(frames)} frames", "yolo_grid", frames)

    def show_frames(self, title: str, model: str, frames: list) -> None:
        print(f"\n== {title}: model {model}")
        rows = []
        for frame in frames:
            if frame.error is not None:
                outcome = f"error {frame.error.code}: {frame.error.message}"
            elif frame.dropped:
                outcome = "dropped"
            elif hasattr(frame.result, "predictions"):
                outcome = f"{frame.result.top.label} ({frame.result.top.score:.3f})"
            else:
                outcome = f"{len(frame.result.detections)} detections"
            rows.append([frame.frame_id, outcome, f"{frame.server_processing_us / 1000:.1f}"])
        print(format_table(("frame", "result", "server ms"), rows))
        errors = sum(frame.error is not None for frame in frames)
        if errors:
            self.failures.append(f"{title}: {errors} frame(s) failed")

    def v2_infer(self) -> None:
        model = next((m for m in DIGIT_MODELS if m in self.ready), None)
        if model is None:
            print("note: V2 ModelInfer skipped: none of the digit models is in model_repo/ yet")
            return
        metadata = self.v2.model_metadata(model)
        image = self.images("digit")[0]
        inputs = {metadata.inputs[0].name: np.array([image.read_bytes()], dtype=object)}
        result = self.v2.infer(model, inputs, outputs={metadata.outputs[0].name: 3})
        top = [entry.decode() for entry in result.outputs[metadata.outputs[0].name].reshape(-1)]
        print(f"\n== V2 ModelInfer: model {result.model_name} v{result.model_version}, request id {result.request_id}")
        print(f"   {image.name} sent as a BYTES input; classification output (score:index:label): {', '.join(top)}")


def request_count(metrics_port: int) -> tuple[float, dict[str, float]]:
    """Sum of convserve_requests_total on /metrics, and its split by method."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    by_method: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith("convserve_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            method = labels.split('method="', 1)[1].split('"', 1)[0]
            by_method[method] += float(value)
    return sum(by_method.values()), dict(by_method)


def http_steps(http_port: int) -> None:
    """The same server over HTTP/REST: V2 readiness and a vision call, as curl would send them."""
    base = f"http://127.0.0.1:{http_port}"
    with urllib.request.urlopen(base + "/v2/health/ready", timeout=10) as response:
        print(f"\n== HTTP/REST on port {http_port}: GET /v2/health/ready -> {response.status}")
    image = IMAGES / "digit_7.png"
    request = urllib.request.Request(
        base + "/v1/models/lenet5/classify?top_k=3", data=image.read_bytes(), method="POST"
    )
    if (MODEL_REPO / "lenet5").is_dir():
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        top = ", ".join(f"{p['label']} {p['score']:.3f}" for p in answer["predictions"])
        print(f"   POST /v1/models/lenet5/classify ({image.name}) -> {top}")
    print(f"   browser console: {base}/")


def run_steps(ports: dict, server: ServerProcess, serving_deadline: float) -> list[str]:
    host = f"127.0.0.1:{ports['port']}"
    manifest = json.loads((IMAGES / "manifest.json").read_text())
    with VisionClient(host, timeout=30.0) as client, InferenceClient(host, timeout=30.0) as v2:
        wait_serving(client, server, max(serving_deadline - time.monotonic(), 1.0))
        ready = {m for m in sorted(p.name for p in MODEL_REPO.iterdir() if p.is_dir()) if v2.model_ready(m)}
        print(f"server at {host} is SERVING; models ready: {', '.join(sorted(ready)) or 'none'}")
        demo = Demo(client, v2, manifest, ready)
        for step in (demo.classify, demo.detect, demo.segment, demo.explain, demo.streams, demo.v2_infer):
            try:
                step()
            except RpcFailed as exc:
                demo.failures.append(f"{step.__name__}: {exc}")
                print(f"FAILED: {demo.failures[-1]}")
    if ports.get("http_port"):
        http_steps(ports["http_port"])
    if ports.get("metrics_port"):  # an OSError here (no /metrics) is reported by main()
        total, by_method = request_count(ports["metrics_port"])
        print(
            f"\n/metrics: convserve_requests_total = {total:.0f} "
            f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(by_method.items()))})"
        )
    return demo.failures


def main() -> int:
    parser = argparse.ArgumentParser(description="serve the bundled models and call every API")
    parser.add_argument("--serve", action="store_true", help="keep the server and the console up until Ctrl-C")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP/console port (0: a free one)")
    args = parser.parse_args()
    started = time.monotonic()
    OUTPUT.mkdir(exist_ok=True)
    server = ServerProcess(OUTPUT / "server.log", args.http_port)
    server.start()
    failures: list[str] = []
    try:
        failures = run_steps(server.wait_started(STARTUP_TIMEOUT_S), server, started + STARTUP_TIMEOUT_S)
        if args.serve and not failures:
            wait_for_interrupt(server)
    except (DemoError, OSError) as exc:
        failures.append(str(exc))
        print(f"FAILED: {exc}\n--- server log (last lines) ---\n{server.log_tail()}", file=sys.stderr)
    finally:
        code = stop_server(server, failures)
    print(f"\nserver stopped with SIGTERM, exit code {code}")
    print(f"demo finished in {time.monotonic() - started:.1f} s; outputs in {OUTPUT.relative_to(REPO)}/")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def wait_for_interrupt(server: ServerProcess) -> None:
    print("\nserving until Ctrl-C (the console URL is above)")
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()


def stop_server(server: ServerProcess, failures: list[str]) -> int | None:
    try:
        code = server.stop()
    except DemoError as exc:
        failures.append(f"{exc}\n{exc.log_tail}")
        return None
    if code != 0:
        failures.append(f"the server exited with code {code}, expected 0 (log: demo-output/server.log)")
    return code


if __name__ == "__main__":
    sys.exit(main())
