"""The committed INT8 versions: they keep the product's accuracy promise here, and the repo stays consistent.

Each INT8 version in model_repo/ (found by its card's "precision": "int8") and the fp32 version it
was made from are both evaluated here, on this machine, on the held-out test subset its card names
(the first K items of the split), with the evaluator `convserve optimize` used. The promise is the
drop from fp32 to INT8 measured on one machine (export/calibration.py `max_drop`: 0.5 accuracy
points for classifiers, 1 point of mAP@0.5 / mean IoU for the detector / segmenter), not the
figures in the card: INT8 kernels differ between CPU instruction sets (AVX2's VPMADDUBSW saturates,
AVX-512 VNNI and AMX do not), so the card records what was measured where (`throughput.machine`).
Also: the card still describes the fp32 file it was made from, the default version is only the
INT8 one when its metric holds, and the server can load it. Finally `convserve optimize` runs end
to end on a copy of a bundled digit model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.calibration import model_data
from export.optimize import first_convs
from export.optimize_cli import main as optimize_main
from export.throughput import Timing, machine_description, ratio_of_medians, tile_batch
from service.config import load_model_config
from service.repository import check_signature, scan_model
from service.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[2] / "model_repo"


def int8_cards() -> list[tuple[str, Path, dict]]:
    found = []
    for card_path in sorted(REPO.glob("*/*/model_card.json")):
        card = json.loads(card_path.read_text())
        if card.get("precision") == "int8":
            found.append((card["name"], card_path.parent, card))
    return found


CARDS = int8_cards()
IDS = [f"{name}-v{card['version']}" for name, _, card in CARDS]


def test_bundled_int8_versions_exist():
    assert CARDS, "no INT8 version in model_repo (convserve optimize --quantize int8 writes them)"


@pytest.mark.parametrize("name, version_dir, card", CARDS, ids=IDS)
def test_int8_version_keeps_the_accuracy_promise_on_this_machine(name, version_dir, card):
    """fp32 and INT8 scored here on the same held-out items: the drop is within the product's bound."""
    data = model_data(name)
    assert card["evaluation"]["max_drop"] == data.max_drop, "the card must state the product's bound"
    config = load_model_config(version_dir.parent / "config.yaml")
    fp32_path = scan_model(version_dir.parent).model_path(card["derived_from"]["version"])
    count = card["evaluation"]["test_subset"]["count"]
    fp32 = data.evaluate(fp32_path, config, count)
    int8 = data.evaluate(version_dir / "model.onnx", config, count)
    assert fp32.metric == int8.metric == card["evaluation"]["metric"]
    drop = fp32.value - int8.value
    assert drop <= data.max_drop + 1e-9, (
        f"{name} v{card['version']}: {int8.metric} fp32 {fp32.value:.4f} -> int8 {int8.value:.4f} on this CPU "
        f"({machine_description()['int8_extensions']}), drop {drop:.4f} > {data.max_drop}; the card recorded "
        f"{card['evaluation']['test_subset']['drop']:.4f} on {card['throughput']['machine']}"
    )


@pytest.mark.parametrize("name, version_dir, card", CARDS, ids=IDS)
def test_int8_card_matches_the_repository(name, version_dir, card):
    source = scan_model(version_dir.parent)
    fp32_file = source.model_path(card["derived_from"]["version"])
    assert hashlib.sha256(fp32_file.read_bytes()).hexdigest() == card["derived_from"]["sha256"], (
        f"{fp32_file} changed since version {card['version']} was quantised from it: rerun `{card['reproduce']}`"
    )
    assert hashlib.sha256((version_dir / "model.onnx").read_bytes()).hexdigest() == card["onnx"]["sha256"]
    evaluation = card["evaluation"]
    judged = evaluation.get("full", evaluation["test_subset"])
    assert evaluation["holds"] == (judged["drop"] <= evaluation["max_drop"] + 1e-9)
    if source.default_version == card["version"]:
        assert evaluation["holds"], "an INT8 version whose metric does not hold must not be the default"
    assert source.default_version == card["serving"]["default_version"]
    assert {"1", "8"} <= set(card["throughput"]["speedup_by_batch"]) or source.config.batching.max_batch_size < 8


@pytest.mark.parametrize("name, version_dir, card", CARDS, ids=IDS)
def test_int8_version_loads_like_the_server_loads_it(name, version_dir, card):
    source = scan_model(version_dir.parent)
    runtime = ModelRuntime(version_dir / "model.onnx", source.config, ("cpu",))
    check_signature(source, card["version"], runtime.signature)
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*graph.input, *graph.output])
    cam = source.config.postprocessing.cam
    if cam and cam.weights_initializer:
        assert cam.weights_initializer in {i.name for i in graph.initializer}
    assert runtime.warm_up(2) > 0


def _digit_model_copy(tmp_path: Path) -> Path:
    """A repository holding only version 1 of a bundled digit classifier."""
    name = next((n for n in ("simple_cnn", "lenet5", "bn_cnn") if (REPO / n / "1" / "model.onnx").is_file()), None)
    assert name is not None, "no bundled digit classifier in model_repo"
    target = tmp_path / "repo" / name
    (target / "1").mkdir(parents=True)
    shutil.copy(REPO / name / "1" / "model.onnx", target / "1")
    shutil.copy(REPO / name / "labels.txt", target)
    config = load_model_config(REPO / name / "config.yaml").model_copy(update={"default_version": None})
    from service.config import dump_model_config

    dump_model_config(config, target / "config.yaml")
    return target


def test_optimize_cli_writes_a_pinned_int8_version(tmp_path, capsys):
    model_dir = _digit_model_copy(tmp_path)
    argv = [
        "--repo",
        str(model_dir.parent),
        "--model",
        model_dir.name,
        "--quantize",
        "int8",
        "--calibration-size",
        "32",
        "--batch-sizes",
        "1,4",
        "--rounds",
        "2",
        "--min-seconds",
        "0",
    ]
    assert optimize_main(argv) == 0
    card = json.loads((model_dir / "2" / "model_card.json").read_text())
    assert card["precision"] == "int8" and card["derived_from"]["version"] == 1
    assert card["calibration"]["samples"] == 32
    assert card["evaluation"]["test_subset"]["count"] == 1000
    assert 0.9 < card["evaluation"]["test_subset"]["int8"] <= 1.0
    assert set(card["throughput"]["speedup_by_batch"]) == {"1", "4"}
    assert load_model_config(model_dir / "config.yaml").default_version == 1  # pinned to fp32
    assert json.loads(capsys.readouterr().out)["version_dir"].endswith("/2")
    # A variant is never the source of another variant; a missing version is refused too.
    assert optimize_main([*argv[:4], "--version", "2", "--quantize", "int8"]) == 1
    assert optimize_main([*argv[:4], "--version", "9", "--quantize", "int8"]) == 1
    assert not (model_dir / "3").exists()


def test_float_first_conv_keeps_that_convolution_in_float32(tmp_path):
    """--float-first-conv: the first Conv reads float32 weights and input (no DequantizeLinear feeds it),
    the others are quantised, and the card and reproduce line say so."""
    model_dir = _digit_model_copy(tmp_path)
    argv = [
        "--repo",
        str(model_dir.parent),
        "--model",
        model_dir.name,
        "--quantize",
        "int8",
        "--float-first-conv",
        "--calibration-size",
        "16",
        "--batch-sizes",
        "1",
        "--rounds",
        "2",
        "--min-seconds",
        "0",
        "--skip-full-evaluation",
    ]
    assert optimize_main(argv) == 0
    graph = onnx.load(str(model_dir / "2" / "model.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    first = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    first_name = next(n.name for n in first.node if n.op_type == "Conv")
    assert len(convs) >= 2 and convs[0].name == first_name
    assert not set(convs[0].input) & dequantized
    assert all(set(c.input) & dequantized for c in convs[1:])
    card = json.loads((model_dir / "2" / "model_card.json").read_text())
    assert card["quantization"]["float32_nodes"] == [first_name]
    assert card["reproduce"].endswith("--quantize int8 --float-first-conv")


def test_first_convs_finds_the_first_layer_of_every_pass_over_the_input(tmp_path):
    """A graph that runs a network on the image and on its mirror (as the bundled fcn8s does) has two
    first convolutions; convolutions behind another one are not first, whatever lies between."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="plain_first"),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu"),
        helper.make_node("Conv", ["a_relu", "w"], ["b"], name="plain_second"),
        helper.make_node("Neg", ["x"], ["x_mirror"], name="mirror"),
        helper.make_node("Conv", ["x_mirror", "w"], ["c"], name="mirror_first"),
        helper.make_node("Conv", ["c", "w"], ["d"], name="mirror_second"),
        helper.make_node("Add", ["b", "d"], ["y"], name="fuse"),
    ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "two_passes",
        [tensor("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [tensor("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph), tmp_path / "two_passes.onnx")
    assert first_convs(tmp_path / "two_passes.onnx") == ("plain_first", "mirror_first")
    bundled = onnx.load(str(REPO / "fcn8s" / "1" / "model.onnx")).graph
    convs_per_pass = sum(n.op_type == "Conv" for n in bundled.node) // 2
    assert len(first_convs(REPO / "fcn8s" / "1" / "model.onnx")) == 2 and convs_per_pass > 2


def test_optimize_cli_rejects_bad_arguments(tmp_path):
    model_dir = _digit_model_copy(tmp_path)
    base = ["--repo", str(model_dir.parent), "--model", model_dir.name, "--quantize", "int8"]
    assert optimize_main([*base, "--batch-sizes", "one"]) == 2
    assert optimize_main([*base, "--threads", "0"]) == 2
    with pytest.raises(SystemExit):
        optimize_main(base[:4])  # neither --quantize nor --precision nor --optimized-graph


def test_interleaving_helpers():
    samples = np.arange(3 * 2).reshape(3, 2)
    assert tile_batch(samples, 5).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    slow, fast = Timing(4, (0.4, 0.2, 0.3)), Timing(4, (0.1, 0.2, 0.1))
    assert ratio_of_medians(slow, fast) == pytest.approx(3.0)
    assert fast.images_per_s == pytest.approx(40.0)


def test_digit_calibration_comes_from_the_training_split_only():
    from export.calibration import CALIBRATION_SEED, DIGITS, calibration_batches
    from export.data.mnist import mnist_split, to_model_inputs

    model_dir = next(REPO / n for n in ("lenet5", "simple_cnn", "bn_cnn") if (REPO / n / "config.yaml").is_file())
    config = load_model_config(model_dir / "config.yaml")
    feeds = calibration_batches(DIGITS, config, 20, batch=8)
    assert [len(f["input"]) for f in feeds] == [8, 8, 4]
    calibration = np.concatenate([f["input"] for f in feeds])
    assert calibration.shape[1:] == tuple(config.inputs[0].dims[1:]) and calibration.dtype == np.float32
    split = mnist_split()
    chosen = np.sort(np.random.default_rng(CALIBRATION_SEED).permutation(len(split.train_images))[:20])
    np.testing.assert_array_equal(calibration, to_model_inputs(split.train_images[chosen], config.preprocessing))
    held_out = {image.tobytes() for image in split.test_images}
    assert not any(image.tobytes() in held_out for image in split.train_images[chosen])
