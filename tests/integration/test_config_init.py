"""`convserve config init`: a config written from a foreign graph loads, serves and says what it guessed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from entrypoint import main
from service.client.v2_client import InferenceClient
from service.client.vision_client import VisionClient
from service.config import load_model_config
from service.config_init import init_config
from service.errors import ConfigError
from testkit import ServerThread, test_settings


def foreign_classifier(path, *, batch="N", dtype=TensorProto.FLOAT, size=8, classes=3, input_name="image"):
    """[batch, 3, size, size] (any dtype, cast to float) -> Flatten -> Gemm -> scores [batch, classes]."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (3 * size * size, classes)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["as_float"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info(input_name, dtype, [batch, 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _serve_and_classify(repo, name):
    server = ServerThread(test_settings(repo)).start()
    try:
        image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        with VisionClient(server.address) as client:
            reply = client.classify([image], name)
        with InferenceClient(server.address) as v2:
            metadata = v2.model_metadata(name)
    finally:
        server.stop()
    return reply.results[0], metadata


def test_fixed_batch_one_gets_max_batch_size_one_and_serves(tmp_path, capsys):
    repo = tmp_path / "repo"
    foreign_classifier(repo / "orient" / "1" / "model.onnx", batch=1)
    labels = tmp_path / "classes.txt"
    labels.write_text("up\nleft\nright\n")
    assert main(["config", "init", str(repo / "orient" / "1" / "model.onnx"), "--labels", str(labels)]) == 0
    printed = capsys.readouterr().out
    assert "guessed task: classification" in printed and "batching.max_batch_size: 1" in printed
    assert "check   preprocessing" in printed
    config = load_model_config(repo / "orient" / "config.yaml")
    assert config.batching.max_batch_size == 1 and config.inputs[0].name == "image"
    assert config.preprocessing.size == (8, 8) and config.labels == "labels.txt"
    result, _ = _serve_and_classify(repo, "orient")
    assert result.top.label in {"up", "left", "right"} and len(result.predictions) == 3


def test_float16_input_gives_an_fp16_config_that_serves(tmp_path):
    repo = tmp_path / "repo"
    model = foreign_classifier(tmp_path / "elsewhere" / "half.onnx", dtype=TensorProto.FLOAT16)
    path, draft = init_config(model, out_dir=repo / "half")
    assert load_model_config(path).inputs[0].dtype == "float16"
    assert not any("max_batch_size" in guess for guess in draft.guesses)  # the batch axis is free
    (repo / "half" / "1").mkdir()
    (repo / "half" / "1" / "model.onnx").write_bytes(model.read_bytes())
    result, metadata = _serve_and_classify(repo, "half")
    assert metadata.inputs[0].datatype == "FP16"
    assert result.top.label == str(result.top.class_index)  # no labels: indices


def test_task_is_guessed_from_the_output_rank_and_labels_are_checked(tmp_path):
    model = foreign_classifier(tmp_path / "m.onnx", classes=4)
    wrong = tmp_path / "labels.txt"
    wrong.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="labels: 2 labels but the model has 4 classes"):
        init_config(model, labels_path=wrong, out_dir=tmp_path / "out")
    path, draft = init_config(model, task="classification", out_dir=tmp_path / "out2")
    assert load_model_config(path).postprocessing.top_k == 4
    assert not any(guess.startswith("task") for guess in draft.guesses)  # given, not guessed


def test_fixed_batch_above_one_is_refused_naming_the_inputs(tmp_path):
    model = foreign_classifier(tmp_path / "m.onnx", batch=4)
    with pytest.raises(ConfigError, match="inputs: a batch axis fixed above 1"):
        init_config(model, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_out_and_name_place_the_config_for_a_graph_kept_elsewhere(tmp_path, capsys):
    model = foreign_classifier(tmp_path / "downloads" / "orientation.onnx")
    labels = tmp_path / "classes.txt"
    labels.write_text("up\nleft\nright\n")
    out = tmp_path / "repo" / "orient"
    arguments = ["config", "init", str(model), "--labels", str(labels), "--out", str(out), "--name", "orientation"]
    assert main(arguments) == 0
    assert f"wrote {out / 'config.yaml'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "labels.txt"]
    assert load_model_config(out / "config.yaml").name == "orientation"
    assert (out / "labels.txt").read_text().split() == ["up", "left", "right"]
