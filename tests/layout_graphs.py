"""ONNX graphs in the detection layouts of models made elsewhere, built with onnx.helper for tests.

Each graph answers a fixed tensor the test constructs (plus zero times its input, so the batch axis
follows the request): the test knows the true boxes and can check what the server decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

INPUT_HW = (64, 96)  # strides 8, 16, 32: A = 8*12 + 4*6 + 2*3 = 126
ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}


def constant_outputs(path: Path, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> None:
    """images [N, 3, H, W] -> each `outputs[name]` with a batch axis in front: [N, *value.shape]."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    declared = []
    for name, value in outputs.items():
        value = np.asarray(value)
        nodes += [
            helper.make_node("Reshape", ["zeros", f"{name}_shape"], [f"{name}_z"]),
            helper.make_node("Cast", [f"{name}_z"], [f"{name}_zc"], to=ONNX_TYPES[value.dtype]),
            helper.make_node("Add", [f"{name}_zc", f"{name}_value"], [name]),
        ]
        initializers += [
            numpy_helper.from_array(np.array([-1] + [1] * value.ndim, np.int64), f"{name}_shape"),
            numpy_helper.from_array(value[None], f"{name}_value"),
        ]
        declared.append(helper.make_tensor_value_info(name, ONNX_TYPES[value.dtype], ["N", *value.shape]))
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, *input_hw])
    graph = helper.make_graph(nodes, "constant_head", [images], declared, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def yolox_head(objects, input_hw: tuple[int, int], strides=(8, 16, 32), classes: int = 3) -> np.ndarray:
    """The raw YOLOX head [A, 5 + classes] that encodes `objects`, everything else objectness 0.

    Each object is (stride, row, column, (cx, cy, w, h) input pixels, class, score); the anchor of
    that cell gets offsets cx / stride - column, log sizes log(w / stride), objectness `score`,
    class score 1 for its class and 0.1 for the others.
    """
    height, width = input_hw
    first = {}
    count = 0
    for stride in strides:
        first[stride] = count
        count += (height // stride) * (width // stride)
    head = np.zeros((count, 5 + classes), np.float32)
    head[:, 5:] = 0.1
    for stride, row, column, (cx, cy, w, h), label, score in objects:
        anchor = first[stride] + row * (width // stride) + column
        head[anchor, :4] = [cx / stride - column, cy / stride - row, np.log(w / stride), np.log(h / stride)]
        head[anchor, 4] = score
        head[anchor, 5 + label] = 1.0
    return head


def write_detector(repo: Path, name: str, detection: dict, outputs: dict[str, np.ndarray], labels) -> Path:
    """A repository entry: the constant graph, labels and a letterbox config; the config's path."""
    directory = repo / name
    constant_outputs(directory / "1" / "model.onnx", outputs, INPUT_HW)
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    config = {
        "name": name,
        "task": "detection",
        "labels": "labels.txt",
        "inputs": [{"name": "images", "dims": [-1, 3, *INPUT_HW]}],
        "outputs": [
            {"name": n, "dtype": "float32" if v.dtype == np.float32 else "int64", "dims": [-1] * (v.ndim + 1)}
            for n, v in outputs.items()
        ],
        "preprocessing": {"color_order": "rgb", "resize": "letterbox", "size": list(INPUT_HW)},
        "batching": {"max_batch_size": 2},
        "postprocessing": {"detection": detection},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory / "config.yaml"
