"""The model config schema (service/config.py): defaults, validation, and errors naming file and field."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from service.config import ModelConfig, dump_model_config, load_model_config, parse_model_config
from service.errors import ConfigError

PATH = "/repo/m/config.yaml"
BASE = {
    "name": "m",
    "task": "classification",
    "inputs": [{"name": "x", "dims": [-1, 3, 8, 8]}],
    "outputs": [{"name": "y", "dims": [-1, 3]}],
    "preprocessing": {"size": [8, 8]},
}


def with_changes(change) -> dict:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def config_error(data) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        parse_model_config(data, PATH)
    assert str(error.value).startswith(PATH)
    return error.value


def test_defaults():
    config = parse_model_config(BASE, PATH)
    assert config.platform == "onnx" and config.labels is None and config.default_version is None
    assert config.inputs[0].dtype == "float32"
    pre = config.preprocessing
    assert (pre.color_order, pre.resize, pre.interpolation, pre.padding, pre.stride) == (
        "rgb",
        "stretch",
        "linear",
        0,
        1,
    )
    assert pre.scale == pytest.approx(1 / 255) and pre.mean == (0.0,) and pre.std == (1.0,)
    assert pre.channels == 3 and pre.input_hw == (8, 8)
    batching = config.batching
    assert (batching.max_batch_size, batching.max_queue_delay_us, batching.instances, batching.max_queue_size) == (
        32,
        500,
        1,
        1024,
    )
    assert config.postprocessing.top_k == 5 and config.postprocessing.scores == "logits"
    assert config.runtime.providers is None and config.runtime.graph_optimization_level == "all"
    assert config.answer_output == "y"


# (change, field named by the error, words of the problem)
FIELD_ERRORS = {
    "unknown top-level field": (lambda d: d.update(colour="red"), "colour", "unknown field"),
    "unknown nested field": (lambda d: d["preprocessing"].update(sise=[8, 8]), "preprocessing.sise", "unknown field"),
    "unknown field in a list item": (lambda d: d["inputs"][0].update(shape=[1]), "inputs[0].shape", "unknown field"),
    "unknown task": (lambda d: d.update(task="captioning"), "task", "'captioning'"),
    "missing task": (lambda d: d.pop("task"), "task", "required"),
    "unknown dtype": (lambda d: d["outputs"][0].update(dtype="float8"), "outputs[0].dtype", "'float8'"),
    "batch axis not -1": (lambda d: d["inputs"][0].update(dims=[1, 3, 8, 8]), "inputs[0].dims", "batch axis"),
    "zero dim": (lambda d: d["inputs"][0].update(dims=[-1, 0, 8, 8]), "inputs[0].dims", "positive"),
    "no inputs": (lambda d: d.update(inputs=[]), "inputs", "at least 1"),
    "bad name": (lambda d: d.update(name="my model"), "name", "pattern"),
    "unknown resize": (lambda d: d["preprocessing"].update(resize="squash"), "preprocessing.resize", "'squash'"),
    "mean length": (lambda d: d["preprocessing"].update(mean=[0.1, 0.2]), "preprocessing", "mean has 2 values"),
    "zero std": (lambda d: d["preprocessing"].update(std=[0.0]), "preprocessing", "std"),
    "size with native": (lambda d: d["preprocessing"].update(resize="native"), "preprocessing", "size must be omitted"),
    "native_scale without native": (
        lambda d: d["preprocessing"].update(native_scale=2.0),
        "preprocessing",
        "native_scale only applies",
    ),
    "native_scale zero": (
        lambda d: d["preprocessing"].update(resize="native", size=None, native_scale=0),
        "preprocessing.native_scale",
        "greater than 0",
    ),
    "resize_shorter without crop": (
        lambda d: d["preprocessing"].update(resize_shorter=10),
        "preprocessing",
        "center_crop",
    ),
    "negative padding": (
        lambda d: d["preprocessing"].update(padding=-1),
        "preprocessing.padding",
        "greater than or equal",
    ),
    "max batch 0": (
        lambda d: d.update(batching={"max_batch_size": 0}),
        "batching.max_batch_size",
        "greater than or equal to 1",
    ),
    "preferred over max": (
        lambda d: d.update(batching={"max_batch_size": 4, "preferred_batch_sizes": [8]}),
        "batching",
        "preferred batch size 8",
    ),
    "unknown provider": (lambda d: d.update(runtime={"providers": ["tpu"]}), "runtime.providers[0]", "'tpu'"),
    "bad threshold": (
        lambda d: d.update(postprocessing={"detection": {"grid": 7, "boxes_per_cell": 2, "iou_threshold": 1.5}}),
        "postprocessing.detection.iou_threshold",
        "less than or equal to 1",
    ),
    "version 0": (lambda d: d.update(default_version=0), "default_version", "greater than or equal to 1"),
}


@pytest.mark.parametrize("case", sorted(FIELD_ERRORS))
def test_errors_name_the_field(case):
    change, field, problem = FIELD_ERRORS[case]
    error = config_error(with_changes(change))
    assert error.path == PATH
    assert error.field == field
    assert problem in error.problem
    assert f"{PATH}: {field}: " in str(error)


# Cross-field checks: pydantic reports them on the model, so the message itself names the fields.
CROSS_ERRORS = {
    "duplicate input names": (
        lambda d: d.update(inputs=[d["inputs"][0], d["inputs"][0]]),
        ["inputs", "duplicate", "'x'"],
    ),
    "answer output unknown": (lambda d: d.update(postprocessing={"output": "z"}), ["postprocessing.output", "'z'"]),
    "cam output unknown": (
        lambda d: d.update(postprocessing={"cam": {"features_output": "f"}}),
        ["postprocessing.cam.features_output", "'f'"],
    ),
    "detection without params": (lambda d: d.update(task="detection"), ["postprocessing.detection"]),
    "channels vs color order": (
        lambda d: d["preprocessing"].update(color_order="gray"),
        ["inputs[0]", "3 channels", "color_order 'gray'"],
    ),
    "dims vs size": (
        lambda d: d["preprocessing"].update(size=[9, 9]),
        ["inputs[0]", "(8, 8)", "preprocessing size (9, 9)"],
    ),
    "dims vs padding": (lambda d: d["preprocessing"].update(padding=2), ["inputs[0]", "(12, 12)"]),
    "preprocessing on a 2-D input": (lambda d: d["inputs"][0].update(dims=[-1, 64]), ["inputs[0]", "NCHW"]),
    "grid without sizes": (
        lambda d: d.update(postprocessing={"detection": {"layout": "yolo_grid"}}),
        ["grid", "boxes_per_cell"],
    ),
}


@pytest.mark.parametrize("case", sorted(CROSS_ERRORS))
def test_cross_field_errors_name_the_fields(case):
    change, words = CROSS_ERRORS[case]
    error = config_error(with_changes(change))
    for word in words:
        assert word in str(error), (word, str(error))


def test_free_spatial_axes_accept_any_preprocessing_size():
    data = with_changes(lambda d: d["inputs"][0].update(dims=[-1, 3, -1, -1]))
    assert parse_model_config(data, PATH).inputs[0].dims == (-1, 3, -1, -1)
    data = with_changes(
        lambda d: (
            d["inputs"][0].update(dims=[-1, 1, 32, 32]),
            d["preprocessing"].update(color_order="gray", size=[28, 28], padding=2),
        )
    )
    assert parse_model_config(data, PATH).preprocessing.input_hw == (32, 32)


def test_tensor_only_model_needs_no_preprocessing():
    data = with_changes(lambda d: (d.pop("preprocessing"), d["inputs"][0].update(dims=[-1, 10])))
    assert parse_model_config(data, PATH).preprocessing is None


def test_not_a_mapping():
    error = config_error(["name", "m"])
    assert error.field == "" and "mapping" in error.problem


def test_values_are_frozen():
    config = parse_model_config(BASE, PATH)
    with pytest.raises(ValidationError):
        config.name = "other"
    with pytest.raises(ValidationError):
        config.batching.max_batch_size = 1


def test_load_reports_file_problems(tmp_path):
    missing = tmp_path / "config.yaml"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read"):
        load_model_config(missing)
    missing.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(missing)
    missing.write_text("name: m\ntask: classification\ninputs: []\noutputs: []\n")
    with pytest.raises(ConfigError) as error:
        load_model_config(missing)
    assert error.value.path == str(missing) and error.value.field == "inputs"


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo unsafe']\ntask: classification\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(path)


def test_dump_then_load_round_trips_and_leaves_out_defaults(tmp_path):
    data = with_changes(
        lambda d: d.update(
            labels="labels.txt",
            batching={"max_batch_size": 4, "preferred_batch_sizes": [2, 4]},
            postprocessing={"top_k": 3},
        )
    )
    config = parse_model_config(data, PATH)
    path = tmp_path / "config.yaml"
    dump_model_config(config, path)
    assert load_model_config(path) == config
    text = path.read_text()
    assert text.startswith("name: m\ntask: classification\n")
    assert "max_queue_delay_us" not in text and "graph_optimization_level" not in text


def test_model_config_json_schema_forbids_extra_fields():
    schema = ModelConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "task", "inputs", "outputs"}
