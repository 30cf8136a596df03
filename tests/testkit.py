"""Shared test helpers: tiny real ONNX models, a model repository, and a real server on loopback.

The server runs in-process on its own event loop in a background thread, bound to port 0 (the
OS picks a free port), so tests talk to it over real gRPC and real HTTP like any client would.
Test modules import these from `testkit` (not from `conftest`: several directories have a
conftest.py, and which one `import conftest` finds depends on collection order).
`ServerProcess` (the server as a child process) is the benchmark's own, bench/server.py.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.server import ServerProcess as ServerProcess  # re-exported: test modules import it from here
from service.settings import Limits, ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_REPO = REPO_ROOT / "model_repo"


def tiny_classifier_onnx(path: Path, classes: int = 3, channels: int = 1, size: int = 8, seed: int = 0) -> None:
    """[N, C, size, size] -> Flatten -> Gemm -> logits [N, classes], fixed seeded weights."""
    rng = np.random.default_rng(seed)
    features = channels * size * size
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (features, classes)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "bias")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


TINY_CONFIG = """\
name: {name}
task: classification
inputs:
  - {{name: input, dtype: float32, dims: [-1, 1, 8, 8]}}
outputs:
  - {{name: logits, dtype: float32, dims: [-1, 3]}}
preprocessing:
  color_order: gray
  resize: stretch
  size: [8, 8]
  scale: 0.00392156862745098
labels: labels.txt
batching:
  max_batch_size: {max_batch}
  max_queue_delay_us: {delay_us}
  max_queue_size: {queue}
postprocessing:
  top_k: 2
"""


def write_tiny_model(
    repo: Path, name: str = "tiny", versions=(1,), max_batch: int = 8, delay_us: int = 2000, queue: int = 64
) -> Path:
    directory = repo / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(
        TINY_CONFIG.format(name=name, max_batch=max_batch, delay_us=delay_us, queue=queue)
    )
    (directory / "labels.txt").write_text("cat\ndog\nbird\n")
    for version in versions:
        tiny_classifier_onnx(directory / str(version) / "model.onnx", seed=version)
    return directory


def slow_classifier_onnx(path, layers: int = 48, width: int = 1024):
    """A deliberately slow model (a chain of width x width MatMuls) to create a backlog."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.03, (64, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.normal(0, 0.03, (width, 3)).astype(np.float32), "w_out"),
    ]
    nodes = [helper.make_node("Flatten", ["input"], ["h0"], axis=1), helper.make_node("MatMul", ["h0", "w_in"], ["h1"])]
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.03, (width, width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i + 1}", f"w{i}"], [f"h{i + 2}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers + 1}", "w_out"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


class ServerThread:
    """A real convserve server on loopback, driven from a background event loop."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running = None

    def start(self) -> "ServerThread":
        from service.server import start_server

        self.thread.start()
        self.running = self.call(start_server(self.settings), timeout=300)
        return self

    def call(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop(), timeout=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_settings(repo: Path, **overrides) -> ServerSettings:
    limits = overrides.pop("limits", Limits())
    base = dict(
        model_repo=repo,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        http_port=-1,
        providers=("cpu",),
        drain_timeout_s=5.0,
        shutdown_grace_s=0.0,
        log_level="warning",
        limits=limits,
    )
    base.update(overrides)
    return ServerSettings(**base)


test_settings.__test__ = False  # a helper, not a test, though test modules import it


def copy_bundled_model(name: str, repo: Path) -> Path:
    target = repo / name
    shutil.copytree(BUNDLED_REPO / name, target)
    return target
