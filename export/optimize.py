"""Graph-level optimisation of an exported ONNX model: offline graph optimisation, FP16, INT8.

Why offline: ONNX Runtime optimises a graph at every session start; saving the optimised graph at
export time moves that cost out of server start-up. Why "extended" and not "all": the "all" level
inserts layout transforms specific to the CPU it ran on, so the saved file would not be portable.

FP16 keeps float32 inputs and outputs at the graph boundary (clients and preprocessing are
unchanged) and computes in half precision inside. INT8 is ONNX Runtime static quantisation in QDQ
format with per-channel weights, calibrated on real samples of the model's training distribution.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

OPT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def save_optimized_graph(source: Path, target: Path, level: str = "extended") -> None:
    """Let ONNX Runtime optimise `source` once and write the optimised graph to `target`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[level]
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(str(target))


def convert_fp16(source: Path, target: Path) -> None:
    """Half-precision weights and activations; float32 inputs/outputs kept at the boundary."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True)
    _sort_topologically(converted.graph)  # the converter appends its boundary Casts at the end
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn's algorithm)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input no node produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over batches of {input name: array}."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self._batches: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # quantize_static reads once; nothing to rewind to
        pass


def first_convs(path: Path) -> tuple[str, ...]:
    """Names of the Conv nodes with no Conv upstream of them: the first layer of every path from the
    input (two in a graph that also runs the network on the mirrored image); ValueError if none."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    behind_conv: dict[str, bool] = {}  # tensor name -> a Conv lies upstream of it (or produced it)

    def after_conv(tensor: str) -> bool:
        if tensor not in behind_conv:
            node = producer.get(tensor)
            behind_conv[tensor] = node is not None and (
                node.op_type == "Conv" or any(after_conv(t) for t in node.input if t)
            )
        return behind_conv[tensor]

    names = tuple(node.name for node in graph.node if node.op_type == "Conv" and not after_conv(node.input[0]))
    if not names:
        raise ValueError(f"{path} has no Conv node")
    return names


def quantize_int8(
    source: Path,
    target: Path,
    calibration: Iterable[dict[str, np.ndarray]],
    per_channel: bool = True,
    float_nodes: tuple[str, ...] = (),
) -> None:
    """Static INT8 quantisation (QDQ, per-channel int8 weights, uint8 activations, min-max calibration);
    `float_nodes` stay float32 (e.g. a first convolution whose few filters one int8 scale fits badly)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(float_nodes),
        )
    onnx.checker.check_model(str(target))


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def max_abs_difference(reference: Path, candidate: Path, inputs: dict[str, np.ndarray]) -> float:
    """Largest |reference - candidate| over every output, on the same inputs."""
    a = session(reference).run(None, inputs)
    b = session(candidate).run(None, inputs)
    return max(float(np.max(np.abs(x.astype(np.float32) - y.astype(np.float32)))) for x, y in zip(a, b))
