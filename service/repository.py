"""Scan a Triton-like model repository and validate it before anything is loaded.

Layout: `<repo>/<model>/config.yaml`, a labels file, and `<repo>/<model>/<version>/model.onnx`
with integer versions. Every problem is a `ConfigError` naming the file and field, so an operator
can fix a bad deploy from one log line. The repository never executes code: configs are parsed
with a safe YAML loader and only ONNX graphs are loaded, whose external data must stay inside the
version directory of the model file.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnx

from service.config import MAX_MODEL_NAME, MODEL_NAME_PATTERN, ModelConfig, load_model_config
from service.errors import ConfigError, InvalidArgument, NotFound
from service.graph_checks import check_graph

CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelSource:
    """A validated model directory: its config, labels and available versions (newest last)."""

    name: str
    directory: Path
    config: ModelConfig
    labels: tuple[str, ...]
    versions: tuple[int, ...]

    def model_path(self, version: int) -> Path:
        return self.directory / str(version) / MODEL_FILE

    @property
    def default_version(self) -> int:
        return self.config.default_version or self.versions[-1]


def find_config(directory: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def model_directories(repo: Path) -> list[Path]:
    """Sub-directories of the repository, sorted; hidden ones are ignored."""
    if not repo.is_dir():
        raise ConfigError(str(repo), "", "model repository directory does not exist")
    return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def find_model_directory(repo: Path, name: str) -> Path:
    """The directory of model `name`, as a client names it in RepositoryModelLoad.

    The name is checked before it touches the file system (a 300-character name made `is_dir`
    raise "File name too long" with the repository path in it); errors never show the path.
    """
    if not name or len(name) > MAX_MODEL_NAME or not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise InvalidArgument(f"model name must be 1..{MAX_MODEL_NAME} characters of A-Z a-z 0-9 _ . -")
    if name.startswith((".", "_")):  # hidden directories are never models, as at startup
        raise NotFound(f"no model directory '{name}' in the repository")
    try:
        directory = repo / name
        if directory.is_dir():
            return directory
    except OSError:
        pass
    raise NotFound(f"no model directory '{name}' in the repository")


def read_labels(directory: Path, config: ModelConfig, config_path: Path) -> tuple[str, ...]:
    if config.labels is None:
        return ()
    path = (directory / config.labels).resolve()
    if directory.resolve() not in path.parents:
        raise ConfigError(str(config_path), "labels", f"'{config.labels}' points outside the model directory")
    if not path.is_file():
        raise ConfigError(str(config_path), "labels", f"labels file '{config.labels}' does not exist")
    labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise ConfigError(str(path), "", "labels file is empty")
    return labels


def list_versions(directory: Path) -> tuple[int, ...]:
    versions = []
    for child in directory.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            if not (child / MODEL_FILE).is_file():
                raise ConfigError(str(child), MODEL_FILE, "version directory has no model.onnx")
            versions.append(int(child.name))
    if not versions:
        raise ConfigError(str(directory), "", "no version directory (an integer such as 1/ holding model.onnx)")
    return tuple(sorted(versions))


def scan_model(directory: Path) -> ModelSource:
    """Validate one model directory (config, labels, versions); no ONNX Runtime involved."""
    config_path = find_config(directory)
    if config_path is None:
        raise ConfigError(str(directory), "config.yaml", "missing model configuration")
    config = load_model_config(config_path)
    if config.name != directory.name:
        raise ConfigError(
            str(config_path), "name", f"'{config.name}' differs from the directory name '{directory.name}'"
        )
    labels = read_labels(directory, config, config_path)
    versions = list_versions(directory)
    if config.default_version is not None and config.default_version not in versions:
        raise ConfigError(
            str(config_path), "default_version", f"version {config.default_version} not in {list(versions)}"
        )
    return ModelSource(directory.name, directory, config, labels, versions)


def _node_tensors(nodes) -> Iterator[onnx.TensorProto]:
    """Tensor attributes of `nodes`, descending into subgraphs (If/Loop/Scan bodies)."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(graph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph can reference external data from, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def check_external_data(model_path: Path) -> None:
    """Refuse ONNX external-data references that leave the model file's own (version) directory.

    Every tensor is checked, including those in subgraphs and local functions, since ONNX Runtime
    loads external data for all of them. The version directory is also what ONNX Runtime allows.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    root = model_path.parent.resolve()
    tensors = itertools.chain(_graph_tensors(model.graph), *(_node_tensors(f.node) for f in model.functions))
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (model_path.parent / location).resolve()
        if location.startswith("/") or root not in target.parents:
            raise ConfigError(
                str(model_path),
                f"initializer {tensor.name}",
                f"external data location '{location}' points outside the model directory {model_path.parent}",
            )


def check_signature(source: ModelSource, version: int, signature) -> None:
    """The config against the graph of `version`: names, dtypes, shapes, batch axis, preprocessing, layout."""
    check_graph(str(find_config(source.directory)), source.config, source.labels, signature, version)
