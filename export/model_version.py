"""Turn a torch model into a complete, verified model version in a model repository.

Two steps, so that a caller (the training script) can evaluate the exact ONNX bytes before
anything is written:

    prepared = prepare_version(model, spec, name="lenet5", num_classes=10, input_hw=(32, 32))
    write_version(prepared, Path("model_repo"), training={...})

`prepare_version` exports, runs the ONNX checker and the parity check, and builds the serving
config — all in memory; it raises (ExportError, ParityError) before touching the disk.
`write_version` writes `<repo>/<name>/<version>/{model.onnx, model_card.json}` through a staging
directory renamed into place, then `config.yaml`, `labels.txt` and `README.md` beside it, so a
failed export never leaves a partial version directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from export.exporter import ExportError, OnnxGraph, export_onnx, verify_onnx, with_metadata
from export.model_card import model_card, model_readme, onnx_metadata
from export.model_stats import count_macs, count_parameters
from export.models.registry import ModelSpec
from export.parity import DEFAULT_TOLERANCE, check_parity
from export.prepared_version import PreparedVersion
from service.config import (
    ModelConfig,
    PostprocessingConfig,
    PreprocessingConfig,
    TensorSpec,
    dump_model_config,
    load_model_config,
)
from service.errors import ConfigError

LABELS_FILE = "labels.txt"


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
    post = spec.postprocessing(num_classes) if spec.postprocessing else PostprocessingConfig(
        scores="logits", top_k=min(5, num_classes)
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
    verify_onnx(graph.onnx_bytes)
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


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric version directory (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def _write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def _install_version_dir(model_dir: Path, version: int, files: dict[str, bytes], overwrite: bool) -> Path:
    """Write `files` into a staging directory and rename it to `<model_dir>/<version>`."""
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists (choose another --version or pass --overwrite)")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; a server running as another user must read it
        for filename, data in files.items():
            (staging / filename).write_bytes(data)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{version}.replaced-", dir=model_dir))
            os.replace(final, retired / "old")
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def _keep_pinned_version(config: ModelConfig, existing: Path) -> ModelConfig:
    """Carry over an operator's `default_version` pin from the config being replaced, as long as
    that version still exists: exporting a new version must not silently change what is served."""
    try:
        pinned = load_model_config(existing).default_version
    except ConfigError:
        return config
    if pinned is None or not (existing.parent / str(pinned)).is_dir():
        return config
    return config.model_copy(update={"default_version": pinned})


def write_version(
    prepared: PreparedVersion,
    repo: Path,
    *,
    version: int | None = None,
    overwrite: bool = False,
    training: dict | None = None,
) -> Path:
    """Write the prepared version into `repo`; returns the version directory."""
    if version is not None and version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    model_dir = Path(repo) / prepared.config.name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version if version is not None else next_version(model_dir)
    onnx_bytes = with_metadata(prepared.graph.onnx_bytes, onnx_metadata(prepared, version))
    card = model_card(prepared, version, onnx_bytes, training)
    try:
        version_dir = _install_version_dir(
            model_dir, version, {"model.onnx": onnx_bytes, "model_card.json": card.encode()}, overwrite
        )
    except BaseException:
        if created and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    config_path = model_dir / "config.yaml"
    config = _keep_pinned_version(prepared.config, config_path)
    dump_model_config(config, config_path.with_name(".config.yaml.tmp"))
    os.replace(config_path.with_name(".config.yaml.tmp"), config_path)
    if prepared.labels is not None:
        _write_atomically(model_dir / LABELS_FILE, ("\n".join(prepared.labels) + "\n").encode())
    _write_atomically(model_dir / "README.md", model_readme(prepared, version, training).encode())
    return version_dir
