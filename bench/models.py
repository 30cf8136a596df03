"""The benchmark's model repository: ResNet-18 (random weights) and the digits model.

Why random weights: throughput and latency do not depend on the weights' values, and nothing can
be downloaded; torchvision's `resnet18(weights=None)` has the real architecture and size. The
digits model is the bundled model_repo/lenet5 when it exists, else the tiny 8x8 classifier from
tests/conftest.py (stated in the results, since it is far smaller than LeNet-5).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DIGITS = REPO_ROOT / "model_repo" / "lenet5"

RESNET18_CONFIG = """\
name: resnet18
task: classification
description: torchvision resnet18(weights=None), random weights, for benchmarking only
inputs:
  - {name: input, dtype: float32, dims: [-1, 3, 224, 224]}
outputs:
  - {name: logits, dtype: float32, dims: [-1, 1000]}
preprocessing:
  color_order: rgb
  resize: center_crop
  resize_shorter: 256
  size: [224, 224]
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
labels: labels.txt
batching: {max_batch_size: 32, max_queue_delay_us: 2000, max_queue_size: 512, instances: 1}
"""


@dataclass(frozen=True)
class BenchModel:
    name: str
    onnx_path: Path
    note: str


def export_resnet18(repo: Path) -> BenchModel:
    """torchvision ResNet-18 with random weights, exported with a dynamic batch axis (opset 17)."""
    import torch
    import torchvision

    directory = repo / "resnet18"
    (directory / "1").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
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
    (directory / "config.yaml").write_text(RESNET18_CONFIG)
    (directory / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(1000)))
    return BenchModel("resnet18", path, "torchvision resnet18(weights=None), 224x224, random weights, exported here")


def digits_model(repo: Path) -> BenchModel:
    """model_repo/lenet5 copied as shipped, or the tiny test classifier as a stand-in."""
    if (BUNDLED_DIGITS / "config.yaml").is_file():
        shutil.copytree(BUNDLED_DIGITS, repo / "lenet5")
        version = sorted((p for p in (repo / "lenet5").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))[-1]
        return BenchModel("lenet5", version / "model.onnx", "bundled model_repo/lenet5 (as shipped)")
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from conftest import write_tiny_model  # the shared test fixture's model

    write_tiny_model(repo, "digits", max_batch=64, delay_us=500, queue=1024)
    return BenchModel(
        "digits",
        repo / "digits" / "1" / "model.onnx",
        "STAND-IN: model_repo/lenet5 does not exist yet; the tiny 1x8x8 3-class classifier "
        "from tests/conftest.py (max_batch 64) is served instead",
    )
