"""Model repository validation (service/repository.py), standalone and through the model registry.

Every problem must name the file and the field an operator has to fix. Checks that need the ONNX
graph (signature, class count, external data) are exercised by loading the models through the
real ModelRegistry, which turns them into UNAVAILABLE models with the reason, while the good
models of the same repository load.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.errors import ConfigError
from service.metrics import Metrics
from service.models import LoadOptions, ModelRegistry
from service.repository import check_external_data, list_versions, model_directories, scan_model

from testkit import TINY_CONFIG, write_tiny_model


def scan_error(directory) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        scan_model(directory)
    return error.value


def load_registry(repo) -> ModelRegistry:
    async def load():
        registry = ModelRegistry(repo, Metrics(process_metrics=False), LoadOptions(providers=("cpu",)))
        await registry.load_all()
        await registry.close(1.0)
        return registry

    return asyncio.run(load())


def test_a_good_model(tmp_path):
    directory = write_tiny_model(tmp_path, versions=(3, 1, 10))
    (directory / "notes").mkdir()  # a non-integer directory is not a version
    source = scan_model(directory)
    assert source.name == "tiny" and source.versions == (1, 3, 10) and source.default_version == 10
    assert source.labels == ("cat", "dog", "bird")
    assert source.model_path(3) == directory / "3" / "model.onnx"


def test_hidden_and_underscore_directories_are_ignored(tmp_path):
    write_tiny_model(tmp_path, name="tiny")
    (tmp_path / ".git").mkdir()
    (tmp_path / "_staging").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    assert [p.name for p in model_directories(tmp_path)] == ["tiny"]
    with pytest.raises(ConfigError, match="does not exist"):
        model_directories(tmp_path / "nope")


def test_missing_config(tmp_path):
    directory = write_tiny_model(tmp_path)
    (directory / "config.yaml").unlink()
    error = scan_error(directory)
    assert (error.path, error.field) == (str(directory), "config.yaml")


def test_missing_version_directory(tmp_path):
    directory = write_tiny_model(tmp_path)
    shutil.rmtree(directory / "1")
    error = scan_error(directory)
    assert error.path == str(directory) and "no version directory" in error.problem


def test_missing_onnx_file(tmp_path):
    directory = write_tiny_model(tmp_path, versions=(1, 2))
    (directory / "2" / "model.onnx").unlink()
    error = scan_error(directory)
    assert (error.path, error.field) == (str(directory / "2"), "model.onnx")
    assert "no model.onnx" in error.problem


def test_unknown_task_names_file_and_field(tmp_path):
    directory = write_tiny_model(tmp_path)
    (directory / "config.yaml").write_text(
        TINY_CONFIG.format(name="tiny", max_batch=8, delay_us=0, queue=8).replace(
            "task: classification", "task: captioning"
        )
    )
    error = scan_error(directory)
    assert (error.path, error.field) == (str(directory / "config.yaml"), "task")
    assert "'captioning'" in error.problem


def test_unknown_field_names_file_and_field(tmp_path):
    directory = write_tiny_model(tmp_path)
    text = (directory / "config.yaml").read_text().replace("  top_k: 2", "  top_k: 2\n  topk: 3")
    (directory / "config.yaml").write_text(text)
    error = scan_error(directory)
    assert (error.path, error.field, error.problem) == (
        str(directory / "config.yaml"),
        "postprocessing.topk",
        "unknown field",
    )


def test_name_must_match_directory(tmp_path):
    directory = write_tiny_model(tmp_path)
    os.rename(directory, tmp_path / "renamed")
    error = scan_error(tmp_path / "renamed")
    assert error.field == "name" and "'tiny'" in error.problem and "'renamed'" in error.problem


def test_labels_file_problems(tmp_path):
    directory = write_tiny_model(tmp_path)
    (directory / "labels.txt").unlink()
    error = scan_error(directory)
    assert (error.path, error.field) == (str(directory / "config.yaml"), "labels")
    (directory / "labels.txt").write_text("\n\n")
    assert "empty" in scan_error(directory).problem
    (tmp_path / "outside.txt").write_text("a\nb\nc\n")
    text = (directory / "config.yaml").read_text().replace("labels: labels.txt", "labels: ../outside.txt")
    (directory / "config.yaml").write_text(text)
    error = scan_error(directory)
    assert error.field == "labels" and "outside the model directory" in error.problem


def test_default_version_must_exist(tmp_path):
    directory = write_tiny_model(tmp_path, versions=(1, 2))
    text = (directory / "config.yaml").read_text() + "default_version: 5\n"
    (directory / "config.yaml").write_text(text)
    error = scan_error(directory)
    assert error.field == "default_version" and "[1, 2]" in error.problem


def test_list_versions_ignores_non_positive_and_non_integer(tmp_path):
    directory = write_tiny_model(tmp_path, versions=(2,))
    for name in ("0", "v3", "latest"):
        (directory / name).mkdir()
    assert list_versions(directory) == (2,)


# ---- checks against the ONNX graph, through the registry ------------------------------------


def test_graph_disagreements_make_models_unavailable(tmp_path):
    write_tiny_model(tmp_path, name="good")
    dims = write_tiny_model(tmp_path, name="dims")  # graph takes [N, 1, 8, 8]
    text = (
        (dims / "config.yaml")
        .read_text()
        .replace("dims: [-1, 1, 8, 8]", "dims: [-1, 1, 16, 16]")
        .replace("size: [8, 8]", "size: [16, 16]")
    )
    (dims / "config.yaml").write_text(text)
    name = write_tiny_model(tmp_path, name="inputname")
    (name / "config.yaml").write_text((name / "config.yaml").read_text().replace("{name: input,", "{name: image,"))
    rank = write_tiny_model(tmp_path, name="outrank")
    (rank / "config.yaml").write_text((rank / "config.yaml").read_text().replace("dims: [-1, 3]", "dims: [-1, 3, 1]"))
    labels = write_tiny_model(tmp_path, name="labels")
    (labels / "labels.txt").write_text("cat\ndog\n")
    classes = write_tiny_model(tmp_path, name="classes")
    (classes / "config.yaml").write_text(
        (classes / "config.yaml").read_text().replace("dims: [-1, 3]", "dims: [-1, 4]")
    )
    (classes / "labels.txt").write_text("a\nb\nc\nd\n")

    registry = load_registry(tmp_path)
    states = {name: (entry.state, entry.reason) for name, entry in registry.entries.items()}
    assert states["good"] == ("READY", "")
    config = lambda model: str(tmp_path / model / "config.yaml")  # noqa: E731
    expected = {
        "dims": [config("dims"), "inputs[0].dims", "[-1, 1, 16, 16]", "[N, 1, 8, 8]"],
        "inputname": [config("inputname"), "inputs[0].name", "'image'", "['input']"],
        "outrank": [config("outrank"), "outputs[0].dims", "[-1, 3, 1]"],
        "labels": [config("labels"), "labels", "2 labels", "3 classes"],
        "classes": [config("classes"), "outputs[0].dims", "[-1, 4]"],
    }
    for model, words in expected.items():
        state, reason = states[model]
        assert state == "UNAVAILABLE", model
        for word in words:
            assert word in reason, (model, word, reason)


def test_corrupt_onnx_names_the_file(tmp_path):
    directory = write_tiny_model(tmp_path, name="broken")
    (directory / "1" / "model.onnx").write_bytes(b"garbage, not a protobuf")
    entry = load_registry(tmp_path).entries["broken"]
    assert entry.state == "UNAVAILABLE"
    assert str(directory / "1" / "model.onnx") in entry.reason and "cannot load the ONNX model" in entry.reason


# ---- external data must stay inside the model file's (version) directory, as ONNX Runtime wants --


def _external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    """Point `tensor` at external data in `location` (relative to the model file's directory)."""
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(3 * 4))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _write_bias_file(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.array([1.0, 2.0, 3.0], np.float32).tobytes())


def external_model(path, location: str, where: str = "initializer") -> None:
    """x [N, 3] + bias [3] -> y, with the bias stored as external data at `location`.

    where: "initializer" (graph initializer), "constant" (a Constant node's tensor attribute) or
    "subgraph" (an initializer inside the then-branch of an If node).
    """
    bias = _external(numpy_helper.from_array(np.zeros(3, np.float32), "bias"), location)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    initializers, nodes = [], []
    if where == "initializer":
        initializers.append(bias)
        nodes.append(helper.make_node("Add", ["x", "bias"], ["y"]))
    elif where == "constant":
        nodes += [helper.make_node("Constant", [], ["bias"], value=bias), helper.make_node("Add", ["x", "bias"], ["y"])]
    else:
        branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
        then_graph = helper.make_graph(
            [helper.make_node("Identity", ["bias"], ["b"])], "then", [], [branch_out], initializer=[bias]
        )
        else_graph = helper.make_graph(
            [helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.zeros(3, np.float32)))],
            "else",
            [],
            [branch_out],
        )
        cond = numpy_helper.from_array(np.array(True), "cond")
        initializers.append(cond)
        nodes += [
            helper.make_node("If", ["cond"], ["picked"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("Add", ["x", "picked"], ["y"]),
        ]
    graph = helper.make_graph(nodes, "ext", [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


EXTERNAL_CONFIG = """\
name: ext
task: classification
inputs:
  - {name: x, dims: [-1, 3]}
outputs:
  - {name: y, dims: [-1, 3]}
"""


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_external_data_path_traversal_is_refused(tmp_path, where):
    repo = tmp_path / "repo"
    model_path = repo / "ext" / "1" / "model.onnx"
    _write_bias_file(repo / "evil.bin")  # ../../evil.bin from 1/ is the repository root: outside the model
    external_model(model_path, "../../evil.bin", where)
    with pytest.raises(ConfigError) as error:
        check_external_data(model_path)
    assert error.value.path == str(model_path)
    assert "'../../evil.bin'" in error.value.problem and "outside the model directory" in error.value.problem
    (repo / "ext" / "config.yaml").write_text(EXTERNAL_CONFIG)
    entry = load_registry(repo).entries["ext"]
    assert entry.state == "UNAVAILABLE" and "../../evil.bin" in entry.reason


@pytest.mark.parametrize(
    "location", ["/etc/passwd", "../../../../../../etc/passwd", "link/bias.bin", "../shared/bias.bin"]
)
def test_absolute_paths_and_escaping_links_are_refused(tmp_path, location):
    model_path = tmp_path / "repo" / "ext" / "1" / "model.onnx"
    _write_bias_file(tmp_path / "elsewhere" / "bias.bin")
    (model_path.parent).mkdir(parents=True)
    (model_path.parent / "link").symlink_to(tmp_path / "elsewhere")
    external_model(model_path, location)
    with pytest.raises(ConfigError, match="outside the model directory"):
        check_external_data(model_path)


@pytest.mark.parametrize("location", ["bias.bin", "weights/bias.bin"])
def test_external_data_inside_the_model_directory_loads(tmp_path, location):
    repo = tmp_path / "repo"
    model_path = repo / "ext" / "1" / "model.onnx"
    _write_bias_file((model_path.parent / location).resolve())
    external_model(model_path, location)
    check_external_data(model_path)
    (repo / "ext" / "config.yaml").write_text(EXTERNAL_CONFIG)
    registry = load_registry(repo)
    entry = registry.entries["ext"]
    assert (entry.state, entry.reason) == ("READY", "")
