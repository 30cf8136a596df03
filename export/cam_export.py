"""Export classifiers with a second output, `features`, that class activation maps are computed from.

Two kinds of classifier (docs/cam.md):

- GAP-headed (resnet18/34/50, googlenet, gap_cnn): `features` is the *input* of the global average
  pooling layer [N, K, h, w], and the config names the ONNX initializer that holds the linear
  layer's weights [C, K] (`postprocessing.cam.weights_initializer`). The server reads that
  initializer from model.onnx and computes CAM_c = ReLU(Σ_k W[c, k] f_k) itself, so the graph
  computes nothing extra and any class can be explained from one forward pass. The initializer
  is found by *value* (the exporter may rename parameters); should the exporter ever fold it into
  another layout, an exact [C, K] copy named `cam_class_weights` is added to the graph instead.
- Everything else (lenet5, simple_cnn, bn_cnn, alexnet, vgg16): `features` is the output of the
  last convolutional stage with a spatial extent, and the config says `method: score_cam`.

    python -m export.cam_export --arch resnet18 --name resnet18_cam --input-size 64 --repo /tmp/repo
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from export.exporter import ExportError
from export.model_version import prepare_version, write_version
from export.prepared_version import PreparedVersion
from export.models import build_model, get_model_spec
from export.models.registry import ModelSpec
from export.parity import DEFAULT_TOLERANCE
from service.config import CamConfig, ModelConfig, PostprocessingConfig

LOGITS_OUTPUT = "logits"
FEATURES_OUTPUT = "features"
ADDED_WEIGHTS = "cam_class_weights"


@dataclass(frozen=True)
class CamSource:
    """Where an architecture's CAM features come from.

    method "cam": `layer` is the global-average-pooling module (its input is exported) and
    `classifier` the linear layer after it. method "score_cam": `layer`'s output is exported.
    """

    method: Literal["cam", "score_cam"]
    layer: str
    classifier: str | None = None


CAM_SOURCES: dict[str, CamSource] = {
    **{arch: CamSource("cam", "avgpool", "fc") for arch in ("resnet18", "resnet34", "resnet50", "googlenet")},
    "gap_cnn": CamSource("cam", "pool", "fc"),
    "lenet5": CamSource("score_cam", "c3"),  # C5 is 1×1 at 32×32: C3 (16@10×10) is the last spatial map
    "simple_cnn": CamSource("score_cam", "features.5"),  # last ReLU, 16@4×4
    "bn_cnn": CamSource("score_cam", "features.5"),  # last conv block (after BatchNorm), 128@5×5
    "alexnet": CamSource("score_cam", "features.11"),  # ReLU after the last conv, before the max-pool
    "vgg16": CamSource("score_cam", "features.29"),  # ReLU after the last conv, before the max-pool
}


def cam_source(arch: str) -> CamSource:
    try:
        return CAM_SOURCES[arch]
    except KeyError:
        raise ExportError(f"no CAM source known for '{arch}'; known: {', '.join(sorted(CAM_SOURCES))}") from None


class FeatureTap(nn.Module):
    """`model(x)` → (logits, features), features read by a hook on one submodule.

    The tap holds the model as `model`, so parameter names gain a `model.` prefix; the exported
    graph is the same computation, plus one more output.
    """

    def __init__(self, model: nn.Module, layer: str, take_input: bool):
        super().__init__()
        self.model = model
        self._captured: list[torch.Tensor] = []
        module = model.get_submodule(layer)
        if take_input:
            module.register_forward_pre_hook(lambda _m, args: self._captured.append(args[0]))
        else:
            module.register_forward_hook(lambda _m, _args, output: self._captured.append(output))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        logits = self.model(x)
        if len(self._captured) != 1:
            raise ExportError(f"the CAM layer ran {len(self._captured)} times in one forward pass (expected once)")
        return logits, self._captured.pop()


def tap_model(model: nn.Module, arch: str) -> FeatureTap:
    source = cam_source(arch)
    return FeatureTap(model, source.layer, take_input=source.method == "cam").eval()


def class_weights_of(model: nn.Module, arch: str) -> np.ndarray | None:
    """The classifier weights [C, K] of a GAP-headed architecture, None for Score-CAM ones."""
    source = cam_source(arch)
    if source.classifier is None:
        return None
    return model.get_submodule(source.classifier).weight.detach().cpu().numpy().astype(np.float32)


def locate_class_weights(onnx_bytes: bytes, weights: np.ndarray) -> tuple[bytes, str]:
    """Name of the initializer equal to `weights` [C, K]; if none is, add one. Returns (bytes, name)."""
    model = onnx.load_from_string(onnx_bytes)
    for initializer in model.graph.initializer:
        if tuple(initializer.dims) == weights.shape and np.array_equal(numpy_helper.to_array(initializer), weights):
            return onnx_bytes, initializer.name
    model.graph.initializer.append(numpy_helper.from_array(weights, ADDED_WEIGHTS))
    return model.SerializeToString(), ADDED_WEIGHTS


def with_cam_config(config: ModelConfig, cam: CamConfig) -> ModelConfig:
    """`config` with `postprocessing.output` = logits and `postprocessing.cam` set (validated)."""
    data = config.model_dump(mode="json")
    data["postprocessing"].update(output=LOGITS_OUTPUT, cam=cam.model_dump(mode="json"))
    return ModelConfig.model_validate(data)


def prepare_cam_version(
    model: nn.Module,
    arch: str,
    *,
    name: str,
    num_classes: int,
    input_hw: tuple[int, int] | None = None,
    labels: list[str] | None = None,
    weights: dict | None = None,
    max_maps: int = 32,
    tolerance: float = DEFAULT_TOLERANCE,
) -> PreparedVersion:
    """Export `model` with outputs (logits, features), verified like any export, with its CAM config."""
    spec: ModelSpec = get_model_spec(arch)
    source = cam_source(arch)
    model.eval()
    tapped_spec = dataclasses.replace(
        spec,
        output_names=(LOGITS_OUTPUT, FEATURES_OUTPUT),
        training_only_prefixes=tuple(f"model.{p}" for p in spec.training_only_prefixes),
        postprocessing=lambda n: PostprocessingConfig(scores="logits", top_k=min(5, n)),
    )
    prepared = prepare_version(
        tap_model(model, arch),
        tapped_spec,
        name=name,
        num_classes=num_classes,
        input_hw=input_hw,
        labels=labels,
        weights=weights,
        tolerance=tolerance,
    )
    features_shape = prepared.graph.output_shapes[1]
    if len(features_shape) != 3 or features_shape[1] * features_shape[2] < 2:
        raise ExportError(f"{arch}: CAM features {list(features_shape)} are not spatial maps [K, h, w] with h·w > 1")
    onnx_bytes, initializer = prepared.graph.onnx_bytes, None
    class_weights = class_weights_of(model, arch)
    if class_weights is not None:
        if class_weights.shape != (num_classes, features_shape[0]):
            raise ExportError(
                f"{arch}: classifier weights {class_weights.shape} do not match "
                f"[C, K] = [{num_classes}, {features_shape[0]}]"
            )
        onnx_bytes, initializer = locate_class_weights(onnx_bytes, class_weights)
    cam = CamConfig(
        method=source.method, features_output=FEATURES_OUTPUT, weights_initializer=initializer, max_maps=max_maps
    )
    graph = dataclasses.replace(prepared.graph, onnx_bytes=onnx_bytes)
    return dataclasses.replace(prepared, graph=graph, config=with_cam_config(prepared.config, cam))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, choices=sorted(CAM_SOURCES))
    parser.add_argument("--name", help="model name in the repository (default: the architecture)")
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--input-size", type=int, help="square input size (default: the architecture's)")
    parser.add_argument("--num-classes", type=int, help="default: the architecture's")
    parser.add_argument("--checkpoint", type=Path, help="state dict to load (default: random weights, seed 0)")
    parser.add_argument("--max-maps", type=int, default=32, help="score_cam: maps (forward passes) per request")
    args = parser.parse_args()
    spec = get_model_spec(args.arch)
    num_classes = args.num_classes or spec.default_num_classes
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=num_classes)
    weights = {"source": "random initialisation (seed 0)"}
    if args.checkpoint:
        from export.checkpoints import load_checkpoint

        load_checkpoint(model, args.checkpoint, spec.training_only_prefixes)
        weights = {"source": str(args.checkpoint)}
    input_hw = (args.input_size, args.input_size) if args.input_size else None
    prepared = prepare_cam_version(
        model,
        args.arch,
        name=args.name or args.arch,
        num_classes=num_classes,
        input_hw=input_hw,
        weights=weights,
        max_maps=args.max_maps,
    )
    print(write_version(prepared, args.repo, overwrite=True))


if __name__ == "__main__":
    main()
