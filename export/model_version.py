"""Turn a zoo classifier into a complete, verified model version in a model repository.

Two steps, so that a caller (the training script) can evaluate the exact ONNX bytes before
anything is written:

    prepared = prepare_version(model, spec, name="lenet5", num_classes=10, input_hw=(32, 32))
    write_version(prepared, Path("model_repo"), training={...})

`prepare_version` exports, runs the parity check and builds the serving config, all in memory;
it raises (ExportError, ParityError) before touching the disk.
`write_version` hands the result to the common writer (export/writer.py: parity gate, staging
directory renamed into place, config.yaml, labels.txt and README.md beside it).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from export.exporter import ExportError, OnnxGraph, export_onnx
from export.model_card import model_card, model_readme, onnx_metadata
from export.model_stats import count_macs, count_parameters
from export.models.registry import ModelSpec
from export.parity import DEFAULT_TOLERANCE, check_parity
from export.prepared_version import PreparedVersion
from export.writer import LABELS_FILE, VersionFiles, write_model_version
from service.config import ModelConfig, PostprocessingConfig, PreprocessingConfig, TensorSpec


def preprocessing_for(spec: ModelSpec, input_hw: tuple[int, int]) -> PreprocessingConfig:
    """The spec's preprocessing resized for a model input of `input_hw` (padding included)."""
    base = spec.preprocessing
    size = (input_hw[0] - 2 * base.padding, input_hw[1] - 2 * base.padding)
    if min(size) <= 0:
        raise ExportError(f"input size {input_hw} is too small for padding {base.padding}")
    update: dict = {"size": size}
    if base.resize_shorter is not None and base.size is not None:
        update["resize_shorter"] = round(base.resize_shorter * min(size) / min(base.size))
    return base.model_copy(update=update)


def check_input_size(spec: ModelSpec, input_hw: tuple[int, int]) -> None:
    """Refuse a size a fixed-size architecture (Flatten → Linear) cannot take, before exporting."""
    if spec.input.fixed_size and tuple(input_hw) != spec.input.hw:
        raise ExportError(
            f"{spec.name} only accepts {spec.input.height}×{spec.input.width} inputs (its dense layers are "
            f"sized for that feature map); got {input_hw[0]}×{input_hw[1]}"
        )


def build_config(spec: ModelSpec, name: str, graph: OnnxGraph, num_classes: int, has_labels: bool) -> ModelConfig:
    """The serving config for an exported graph (service.config.ModelConfig)."""
    post = (
        spec.postprocessing(num_classes)
        if spec.postprocessing
        else PostprocessingConfig(scores="logits", top_k=min(5, num_classes))
    )
    return ModelConfig(
        name=name,
        task=spec.task,
        inputs=(TensorSpec(name=graph.input_name, dims=(-1, *graph.input_shape)),),
        outputs=tuple(
            TensorSpec(name=n, dims=(-1, *shape)) for n, shape in zip(graph.output_names, graph.output_shapes)
        ),
        preprocessing=preprocessing_for(spec, graph.input_shape[1:]),
        labels=LABELS_FILE if has_labels else None,
        postprocessing=post,
        description=spec.summary,
    )


def prepare_version(
    model: nn.Module,
    spec: ModelSpec,
    *,
    name: str,
    num_classes: int,
    input_hw: tuple[int, int] | None = None,
    labels: list[str] | None = None,
    weights: dict | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> PreparedVersion:
    """Export `model` (eval mode), verify it and check parity; nothing is written."""
    input_hw = tuple(input_hw or spec.input.hw)
    check_input_size(spec, input_hw)
    if labels is not None and len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels given for {num_classes} classes")
    input_shape = (spec.input.channels, *input_hw)
    model.eval()
    graph = export_onnx(model, input_shape, spec.output_names)
    parity = check_parity(model, graph.onnx_bytes, input_shape, tolerance=tolerance)
    return PreparedVersion(
        spec=spec,
        config=build_config(spec, name, graph, num_classes, labels is not None),
        graph=graph,
        parity=parity,
        parameters=count_parameters(model, spec.training_only_prefixes),
        macs=count_macs(model, input_shape),
        labels=tuple(labels) if labels is not None else None,
        weights=weights or {"source": "random initialisation"},
    )


def classifier_files(prepared: PreparedVersion, training: dict | None = None) -> VersionFiles:
    """What the common writer writes for a prepared zoo export: its card, README, labels and metadata."""
    return VersionFiles(
        config=prepared.config,
        onnx_bytes=prepared.graph.onnx_bytes,
        parity=prepared.parity,
        card=model_card(prepared, training),
        labels=prepared.labels,
        readme=lambda version: model_readme(prepared, version, training),
        metadata=onnx_metadata(prepared),
    )


def write_version(
    prepared: PreparedVersion,
    repo: Path,
    *,
    version: int | None = None,
    overwrite: bool = False,
    training: dict | None = None,
) -> Path:
    """Write the prepared version into `repo` through the common writer; returns the version directory."""
    return write_model_version(classifier_files(prepared, training), repo, version=version, overwrite=overwrite)
