"""Offline graph optimisation, FP16 conversion parity on the CPU, and INT8 quantisation mechanics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision

from testkit import tiny_classifier_onnx
from export.optimize import convert_fp16, max_abs_difference, quantize_int8, save_optimized_graph, session

# FP16 carries ~3 significant decimal digits: relative error ~1e-3 per op. For a ResNet-18 at 64x64
# with random weights the logits are O(1), and the measured max abs difference is ~1e-3; 2e-2 leaves
# room for other CPUs' fp16 kernels while still catching a broken conversion (which gives O(1) errors).
FP16_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path_factory.mktemp("resnet") / "model.onnx"
    torch.onnx.export(
        model,
        torch.randn(1, 3, 64, 64),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_fp16_keeps_float32_io_and_matches_fp32(resnet18_onnx, tmp_path):
    target = tmp_path / "fp16.onnx"
    convert_fp16(resnet18_onnx, target)
    model = onnx.load(str(target))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    inputs = {"input": np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    difference = max_abs_difference(resnet18_onnx, target, inputs)
    assert 0 < difference < FP16_TOLERANCE


def test_saved_optimized_graph_is_equivalent(resnet18_onnx, tmp_path):
    target = tmp_path / "optimized.onnx"
    save_optimized_graph(resnet18_onnx, target)
    original_nodes = len(onnx.load(str(resnet18_onnx)).graph.node)
    assert len(onnx.load(str(target)).graph.node) < original_nodes  # BatchNorm folded, ReLU fused
    inputs = {"input": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    assert max_abs_difference(resnet18_onnx, target, inputs) < 1e-4


def test_int8_quantisation_produces_qdq_graph_close_to_fp32(tmp_path):
    source = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(source)
    rng = np.random.default_rng(2)
    calibration = [{"input": rng.random((4, 1, 8, 8), dtype=np.float32)} for _ in range(8)]
    target = tmp_path / "int8.onnx"
    quantize_int8(source, target, calibration)
    ops = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inputs = {"input": rng.random((8, 1, 8, 8), dtype=np.float32)}
    reference = session(source).run(None, inputs)[0]
    quantized = session(target).run(None, inputs)[0]
    assert np.abs(reference - quantized).max() < 0.1 * np.abs(reference).max()
    assert (reference.argmax(1) == quantized.argmax(1)).mean() >= 0.75
