"""What the GPU check runs: its models, CPU-vs-CUDA parity, and raw vs served timings.

Kept apart from bench/gpu_check.py (environment detection, the report), which drives these.
Parity compares against the CPU fp32 output with a relative tolerance, max |a - b| / max(1, max
|reference|): CUDA may use TF32 and other reduction orders for fp32; fp16 keeps about three
significant digits per operation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CUDA = "CUDAExecutionProvider"
FP32_TOLERANCE, FP16_TOLERANCE = 2e-2, 5e-2


@dataclass(frozen=True)
class Item:
    check: str
    status: str  # "ok", "FAILED", "not tested"
    detail: str


def tiny_model(directory: Path) -> Path:
    """A small conv classifier [N,3,32,32] -> [N,10] with a serving config (CPU smoke mode)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.2, n)
        for n, s in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc", (10, 8)), ("fcb", (10,)))
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    (directory / "1").mkdir(parents=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(directory / "1" / "model.onnx")
    )
    (directory / "config.yaml").write_text(
        "name: tiny\ntask: classification\ninputs:\n- {name: input, dims: [-1, 3, 32, 32]}\n"
        "outputs:\n- {name: logits, dims: [-1, 10]}\nbatching: {max_batch_size: 8}\n"
    )
    return directory / "1" / "model.onnx"


def resnet50_model(directory: Path) -> Path:
    """torchvision ResNet-50 with random weights, dynamic batch, with a config for batches up to 64."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    (directory / "1").mkdir(parents=True)
    path = directory / "1" / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    (directory / "config.yaml").write_text(
        "name: resnet50\ntask: classification\ninputs:\n- {name: input, dims: [-1, 3, 224, 224]}\n"
        "outputs:\n- {name: logits, dims: [-1, 1000]}\nbatching: {max_batch_size: 64, max_queue_delay_us: 1000}\n"
    )
    return path


def sample_input(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    spec = config.inputs[0]
    dims = [d if d > 0 else 96 for d in spec.dims[1:]]
    return {spec.name: np.random.default_rng(seed).standard_normal((batch, *dims)).astype(np.float32)}


def relative_difference(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """max |reference - candidate| over every output, divided by max(1, max |reference|)."""
    worst = max(float(np.max(np.abs(r - c.astype(np.float32)))) for r, c in zip(reference, candidate))
    return worst / max(1.0, max(float(np.max(np.abs(r))) for r in reference))


def session(ort, path: Path, provider: str):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    made = ort.InferenceSession(str(path), options, providers=providers)
    if made.get_providers()[0] != provider:
        raise RuntimeError(f"session fell back to {made.get_providers()[0]}")
    return made


def parity_items(ort, name: str, path: Path, config, scratch: Path, cuda_reason: str | None) -> list[Item]:
    """fp32 and fp16 parity against the CPU fp32 reference; on CPU only the fp16 conversion is checked."""
    from export.optimize import convert_fp16

    feed = sample_input(config, 4)
    reference = session(ort, path, "CPUExecutionProvider").run(None, feed)
    fp16 = scratch / f"{name}.fp16.onnx"
    convert_fp16(path, fp16)
    items = []
    cpu16 = relative_difference(reference, session(ort, fp16, "CPUExecutionProvider").run(None, feed))
    items.append(
        Item(
            f"{name}: fp16 on CPU vs fp32 on CPU",
            "ok" if cpu16 <= FP16_TOLERANCE else "FAILED",
            f"relative max diff {cpu16:.2e} (tolerance {FP16_TOLERANCE:g})",
        )
    )
    for label, file, tolerance in (("fp32", path, FP32_TOLERANCE), ("fp16", fp16, FP16_TOLERANCE)):
        check = f"{name}: {label} on CUDA vs fp32 on CPU"
        if cuda_reason:
            items.append(Item(check, "not tested", cuda_reason))
            continue
        try:
            diff = relative_difference(reference, session(ort, file, CUDA).run(None, feed))
            items.append(
                Item(
                    check,
                    "ok" if diff <= tolerance else "FAILED",
                    f"relative max diff {diff:.2e} (tolerance {tolerance:g})",
                )
            )
        except Exception as exc:
            items.append(Item(check, "FAILED", f"{type(exc).__name__}: {exc}"))
    return items


@dataclass(frozen=True)
class TimingRow:
    model: str
    path: str  # "raw" (the server's ModelRuntime in-process) or "served" (gRPC V2 to convserve serve)
    provider: str
    batch: int
    median_ms: float
    images_per_s: float


def _median_run(call, seconds: float) -> float:
    for _ in range(2):
        call()
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def raw_timings(
    name: str, path: Path, config, provider: str, batches: tuple[int, ...], seconds: float
) -> list[TimingRow]:
    """The server's own runtime (threads, IO binding on CUDA), without gRPC or batching."""
    from service.runtime import ModelRuntime

    runtime = ModelRuntime(path, config, (provider,), require_gpu=provider == "cuda")
    rows = []
    for batch in (b for b in batches if b <= config.batching.max_batch_size):
        feed = sample_input(config, batch)
        median = _median_run(lambda feed=feed: runtime.run(feed), seconds)
        rows.append(TimingRow(name, "raw", runtime.provider, batch, round(median * 1000, 3), round(batch / median, 1)))
    return rows


def served_timings(
    repo: Path, configs: dict, provider: str, batches: tuple[int, ...], seconds: float
) -> tuple[list[TimingRow], dict]:
    """One client, one request at a time, each carrying a whole batch: the served path's latency cost,
    over plain gRPC ("served") and with input and output in system shared memory ("served-shm")."""
    from bench.server import served_models
    from service.client import InferenceClient

    extra = ("--providers", "cuda,cpu", "--require-gpu", "true") if provider == "cuda" else ("--providers", "cpu")
    server = served_models(repo, *extra)
    rows, actual = [], {e["model"]: e.get("provider") for e in server.events() if e.get("event") == "model_ready"}
    try:
        with InferenceClient(server.address, timeout=120) as client:
            for name, config in configs.items():
                for batch in (b for b in batches if b <= config.batching.max_batch_size):
                    feed = sample_input(config, batch)
                    median = _median_run(lambda name=name, feed=feed: client.infer(name, feed), seconds)
                    rows.append(
                        TimingRow(
                            name,
                            "served",
                            actual.get(name, "?"),
                            batch,
                            round(median * 1000, 3),
                            round(batch / median, 1),
                        )
                    )
                    median = _shm_median_run(server.address, name, config, feed, seconds)
                    rows.append(
                        TimingRow(
                            name,
                            "served-shm",
                            actual.get(name, "?"),
                            batch,
                            round(median * 1000, 3),
                            round(batch / median, 1),
                        )
                    )
    finally:
        server.stop()
    return rows, actual


def _shm_median_run(address: str, name: str, config, feed: dict[str, np.ndarray], seconds: float) -> float:
    """Median ModelInfer time with the input and the first output in system shared memory, through
    tritonclient's own shared-memory utilities (regions made, registered, then removed)."""
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    ((input_name, array),) = feed.items()
    output = config.outputs[0]
    item = int(np.prod([d if d > 0 else 1 for d in output.dims[1:]]))
    out_bytes = array.shape[0] * item * 4 * 64  # float32, with room for free (-1) output dimensions
    key = f"/convserve_gpu_check_{name}"
    regions = [
        shm.create_shared_memory_region(f"{name}_in", f"{key}_in", array.nbytes),
        shm.create_shared_memory_region(f"{name}_out", f"{key}_out", out_bytes),
    ]
    client = triton.InferenceServerClient(address)
    try:
        shm.set_shared_memory_region(regions[0], [array])
        client.register_system_shared_memory(f"{name}_in", f"{key}_in", array.nbytes)
        client.register_system_shared_memory(f"{name}_out", f"{key}_out", out_bytes)
        tensor = triton.InferInput(input_name, list(array.shape), "FP32")
        tensor.set_shared_memory(f"{name}_in", array.nbytes)
        requested = triton.InferRequestedOutput(output.name)
        requested.set_shared_memory(f"{name}_out", out_bytes)
        return _median_run(lambda: client.infer(name, [tensor], outputs=[requested]), seconds)
    finally:
        client.unregister_system_shared_memory()
        client.close()
        for region in regions:
            shm.destroy_shared_memory_region(region)
